"""testinfra checks of the production-like node over SSH, after each regime change.

The node runs systemd with cgroup v2 only: libvirt places the guest at
machine.slice/machine-qemu\\x2d<id>\\x2d<name>.scope/libvirt/{emulator,vcpuN}; hpcvirt's partition is
machine.slice/hpcvirt-p1.partition (docs/partition.md, "cgroup v2 under systemd").
"""

import json

CG = "/sys/fs/cgroup"
PART = CG + "/machine.slice/hpcvirt-p1.partition"
GUEST = "hpcvirt-prod-1"

QUERY = r"""
import json, os, libvirt
conn = libvirt.open("qemu:///system")
dom = conn.lookupByName("%s")
info = {"active": bool(dom.isActive())}
if dom.isActive():
    maps = dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    info["pins"] = [[i for i, on in enumerate(m) if on] for m in maps]
    info["emulator"] = [i for i, on in enumerate(dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)) if on]
    pid = open("/run/libvirt/qemu/%s.pid").read().strip()
    tasks = os.listdir("/proc/%%s/task" %% pid)
    info["cgroups"] = sorted({open("/proc/%%s/task/%%s/cgroup" %% (pid, t)).read().strip().split("::", 1)[1]
                              for t in tasks})
print(json.dumps(info))
""" % (GUEST, GUEST)


def sudo(host, command):
    return host.check_output("sudo -n " + command)


def guest(host):
    return json.loads(sudo(host, "/usr/bin/python3 -c '%s'" % QUERY.replace("'", "'\"'\"'")))


def regime(host):
    return json.loads(host.file("/var/lib/hpcvirt/regime.json").content_string)["regime"]


def read(host, path):
    return host.file(path).content_string.strip()


def last_beat(host):
    line = sudo(host, "grep 'hpcvirt-hb seq=' /var/lib/hpcvirt/console/%s.log | tail -1" % GUEST)
    return dict(field.split("=", 1) for field in line.split()[1:])


def test_the_node_is_systemd_with_cgroup_v2_only(host):
    assert read(host, "/proc/1/comm") == "systemd"
    mounts = [line.split() for line in read(host, "/proc/self/mounts").splitlines()]
    assert [m[2] for m in mounts if m[2].startswith("cgroup")] == ["cgroup2"]
    assert "cpuset" in read(host, CG + "/cgroup.controllers").split()
    assert "cpuset" in read(host, CG + "/machine.slice/cgroup.subtree_control").split()


def test_cgroup_files_match_the_regime(host):
    if regime(host) == "space_shared":
        assert host.file(PART).is_directory
        assert read(host, PART + "/cpuset.cpus") == "1"
        assert read(host, PART + "/cpuset.cpus.effective") == "1"
        # Read back as the kernel has it: below the member machine.slice a partition root would
        # read "root invalid (Parent is not a partition root)", so hpcvirt keeps it a member and
        # holds exclusivity by admission control.
        assert read(host, PART + "/cpuset.cpus.partition") == "member"
        assert int(read(host, "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")) >= 16
    else:
        assert not host.file(PART).exists
    # systemd's machine cgroup allows every CPU (housekeeping for the emulator, pool, partitions).
    assert read(host, CG + "/machine.slice/cpuset.cpus.effective") == "0-1"
    assert "invalid" not in read(host, CG + "/machine.slice/cpuset.cpus.partition")


def test_node_info_reports_the_partition_as_the_kernel_reads_it(host):
    info = host.ansible("hpcvirt.regime.node_info", "include_cpus=false", check=False, become=True)
    assert info["cgroup"]["cpuset_version"] == 2 and info["cgroup"]["systemd"]
    assert info["cgroup"]["problems"] == []
    parts = info["layout"]["partitions"]
    if regime(host) == "space_shared":
        assert [(p["name"], p["cpus"], p["partition_state"], p["cgroup"]) for p in parts] == [
            ("p1", "1", read(host, PART + "/cpuset.cpus.partition"), PART)]
    else:
        assert parts == []


def test_pins_as_libvirt_reports_them(host):
    found = guest(host)
    assert found["active"]
    # Every QEMU thread stays in the guest's own scope (threaded cgroups: vCPU and emulator threads
    # cannot leave it), below systemd's machine.slice.
    leaves = sorted({c.rsplit("/", 1)[1] for c in found["cgroups"]})
    assert all(c.startswith("/machine.slice/machine-qemu") and "/libvirt/" in c for c in found["cgroups"]), found
    assert leaves == ["emulator", "vcpu0"], found
    if regime(host) == "space_shared":
        assert found["pins"] == [[1]]          # dropped onto p1
        assert found["emulator"] == [0]        # emulator on housekeeping
    else:
        assert found["pins"] == [[1]]          # the pool is CPU 1 on this 2-vCPU node


def test_the_vcpu_cgroup_allows_the_pin(host):
    vcpu = sudo(host, "sh -c 'ls -d %s/machine.slice/machine-qemu*.scope/libvirt/vcpu0'" % CG).strip()
    assert read(host, vcpu + "/cpuset.cpus.effective") == "1"


def test_the_guest_still_runs_its_original_boot_and_beats(host):
    boots = json.loads(host.file("/var/lib/hpcvirt/molecule-boots.json").content_string)
    beat = last_beat(host)
    assert beat["boot"] == boots[GUEST], "%s restarted" % GUEST
    before = int(beat["seq"])
    host.run("sleep 8")
    after = last_beat(host)
    assert after["boot"] == boots[GUEST] and int(after["seq"]) > before
