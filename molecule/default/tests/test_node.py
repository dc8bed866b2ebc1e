"""testinfra checks of the node after each regime change (run by molecule's verify)."""

import json
import os

QUERY = r"""
import json, libvirt
conn = libvirt.open("qemu:///system")
out = {}
for dom in conn.listAllDomains(0):
    if not dom.name().startswith("hpcvirt-vse-demo-"):
        continue
    info = {"active": bool(dom.isActive()), "saved": bool(dom.hasManagedSaveImage(0))}
    if dom.isActive():
        maps = dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        info["pins"] = [[i for i, on in enumerate(m) if on] for m in maps]
        info["emulator"] = [i for i, on in enumerate(dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)) if on]
    out[dom.name()] = info
print(json.dumps(out))
"""


def guests(host):
    return json.loads(host.check_output("/usr/bin/python3 -c '%s'" % QUERY.replace("'", "'\"'\"'")))


def regime(host):
    """The regime this stage of the scenario moved the node to (written by converge/side_effect)."""
    with open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "expected-regime")) as handle:
        return handle.read().strip()


def test_the_node_records_the_regime_the_scenario_asked_for(host):
    recorded = json.loads(host.file("/var/lib/hpcvirt/regime.json").content_string)
    assert recorded["regime"] == regime(host)
    assert not host.file("/var/lib/hpcvirt/journal/node_regime.json").exists     # the change completed


def last_beat(host, name):
    line = host.check_output("grep 'hpcvirt-hb seq=' /var/lib/hpcvirt/console/%s.log | tail -1" % name)
    return dict(field.split("=", 1) for field in line.split()[1:])


def test_cgroups_match_the_regime(host):
    partition = host.file("/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition")
    if regime(host) == "space_shared":
        assert partition.is_directory
        assert host.file("/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition/cpuset.cpus").content_string.strip() == "1"
        assert int(host.file("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").content_string) >= 16
    else:
        assert not partition.exists


def test_every_vcpu_is_pinned_as_the_regime_says(host):
    found = guests(host)
    if regime(host) == "space_shared":
        assert found["hpcvirt-vse-demo-1"]["pins"] == [[1]]        # dropped onto p1
        assert found["hpcvirt-vse-demo-1"]["emulator"] == [0]      # emulator on housekeeping
        assert not found["hpcvirt-vse-demo-2"]["active"] and found["hpcvirt-vse-demo-2"]["saved"]   # preempted
    else:
        for name in ("hpcvirt-vse-demo-1", "hpcvirt-vse-demo-2"):
            assert found[name]["active"] and not found[name]["saved"]
            assert found[name]["pins"] == [[1]]                    # the pool


def test_guests_still_run_their_original_boot(host):
    boots = json.loads(host.file("/var/lib/hpcvirt/molecule-boots.json").content_string)
    active = {name for name, info in guests(host).items() if info["active"]}
    for name, boot in boots.items():
        beat = last_beat(host, name)
        assert beat["boot"] == boot, "%s restarted" % name
        if name in active:
            before = float(beat["up"])
            host.run("sleep 1")
            after = last_beat(host, name)
            assert after["boot"] == boot and float(after["up"]) > before
