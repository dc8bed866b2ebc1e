"""The partition module and role on this machine's REAL cgroup v1 cpuset hierarchy, real hugepage
pools and real /proc/irq affinities. Everything is restored afterwards, even when a test fails.

Other developers' guests may run here (their cgroups are siblings below machine/): nothing here
makes a cgroup exclusive beside them. The kernel's exclusivity rules are shown in our own cgroups
(``hpcvirt-itest-*``), which is faithful: v1 applies the same rules at every level.
"""

import errno
import json
import os
import shutil
import uuid

import pytest

from conftest import ROOT, run_module, run_playbook

CPUSET = "/sys/fs/cgroup/cpuset"
MACHINE = os.path.join(CPUSET, "machine")
HUGEPAGES = "/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
LAYOUT = "/etc/hpcvirt/layout.json"
LIB_DIRS = ("/usr/local/lib/hpcvirt", "/usr/local/libexec/hpcvirt")

pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(CPUSET, "cpuset.cpu_exclusive")),
                                reason="needs the cgroup v1 cpuset hierarchy of the development machine")


def read(path):
    with open(path) as handle:
        return handle.read().strip()


def irq_affinities():
    found = {}
    for entry in os.listdir("/proc/irq"):
        if entry.isdigit():
            found[entry] = read("/proc/irq/%s/smp_affinity_list" % entry)
    return found


def node_state():
    return {"machine_cpus": read(os.path.join(MACHINE, "cpuset.cpus")),
            "machine_mems": read(os.path.join(MACHINE, "cpuset.mems")),
            "partitions": sorted(d for d in os.listdir(MACHINE) if d.startswith("hpcvirt-")),
            "hugepages": read(HUGEPAGES), "irqs": irq_affinities(), "layout": os.path.exists(LAYOUT)}


@pytest.fixture
def restore_node():
    """Put back everything the partition module could change, whatever happened in the test."""
    if os.path.exists(LAYOUT):
        pytest.skip("%s exists: another run owns this node's layout" % LAYOUT)
    before = node_state()
    yield before
    for name in os.listdir(MACHINE):
        if name.startswith("hpcvirt-") and name.endswith(".partition"):
            os.rmdir(os.path.join(MACHINE, name))
    for irq, cpus in before["irqs"].items():
        try:
            with open("/proc/irq/%s/smp_affinity_list" % irq, "w") as handle:
                handle.write(cpus)
        except OSError:
            pass
    with open(HUGEPAGES, "w") as handle:
        handle.write(before["hugepages"])
    if os.path.exists(LAYOUT):
        os.unlink(LAYOUT)
    for directory in LIB_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


def role_play(state="present", check=False):
    """The partition role with the local inventory's group_vars, saving its module result."""
    out = os.path.join(ROOT, ".build", "tmp", "role-%s.json" % uuid.uuid4().hex[:8])
    play = """
        - name: Partition role
          hosts: hpc_nodes
          gather_facts: false
          tasks:
            - name: Run the role
              ansible.builtin.include_role:
                name: hpcvirt.regime.partition
              vars:
                partition_state: %s
            - name: Save the module result
              ansible.builtin.copy:
                content: "{{ __partition_result | to_json }}"
                dest: %s
              check_mode: false
              changed_when: false
        """ % (state, out)
    args = ["--diff"] + (["--check"] if check else [])
    proc = run_playbook(play, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out) as handle:
        result = json.load(handle)
    os.unlink(out)
    return result, proc


def test_role_carves_this_machine_idempotently_and_absent_restores_it(restore_node):
    before = restore_node
    predicted, _unused = role_play(check=True)
    assert node_state() == before, "check mode changed the node"

    first, proc = role_play()
    assert first["changed"] is True
    assert first["plan"] == predicted["plan"], "check mode did not predict the run's plan"
    partition = os.path.join(MACHINE, "hpcvirt-p1.partition")
    assert read(os.path.join(partition, "cpuset.cpus")) == "1"
    assert read(os.path.join(partition, "cpuset.mems")) == "0"
    assert int(read(HUGEPAGES)) == int(before["hugepages"]) + 16
    steered = first["irq"]["steered"]
    assert steered and all(read("/proc/irq/%s/smp_affinity_list" % irq) == "0" for irq in steered)
    record = json.load(open(LAYOUT))
    assert record["housekeeping"] == "0" and record["partitions"][0]["cpus"] == "1"
    # The kernel cannot hold the partition exclusive beside libvirt's guest cgroups; it says why.
    assert first["exclusivity"]["p1"]["enforced"] is False
    assert first["exclusivity"]["p1"]["kernel_state"] == "member"
    assert os.access("/usr/local/libexec/hpcvirt/hpcvirt-partition-apply", os.X_OK)

    second, proc = role_play()
    assert second["changed"] is False and second["plan"] == []
    assert "changed=0" in proc.stdout

    # A reboot loses cgroups, hugepages and IRQ affinities: the boot-time re-apply restores them.
    os.rmdir(partition)
    with open(HUGEPAGES, "w") as handle:
        handle.write(before["hugepages"])
    import subprocess
    boot = subprocess.run(["/usr/local/libexec/hpcvirt/hpcvirt-partition-apply"], capture_output=True, text=True, check=False)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert json.loads(boot.stdout)["changed"] is True
    assert read(os.path.join(partition, "cpuset.cpus")) == "1"
    assert int(read(HUGEPAGES)) == int(before["hugepages"]) + 16

    gone, _unused = role_play(state="absent")
    assert gone["changed"] is True
    after = node_state()
    assert after == before


def test_v1_kernel_refuses_exclusivity_as_the_backend_predicts():
    """Real kernel, own cgroups: an exclusive child needs an exclusive parent (EACCES), and an
    exclusive cgroup may not overlap a sibling (EINVAL) - here libvirt's machine cgroup."""
    top = os.path.join(CPUSET, "hpcvirt-itest-%s" % uuid.uuid4().hex[:6])
    child = os.path.join(top, "hpcvirt-x.partition")
    try:
        os.mkdir(top)
        for key, value in (("cpuset.mems", "0"), ("cpuset.cpus", read(os.path.join(CPUSET, "cpuset.cpus")))):
            with open(os.path.join(top, key), "w") as handle:
                handle.write(value)
        os.mkdir(child)
        for key, value in (("cpuset.mems", "0"), ("cpuset.cpus", "1")):
            with open(os.path.join(child, key), "w") as handle:
                handle.write(value)
        with pytest.raises(OSError) as caught:
            with open(os.path.join(child, "cpuset.cpu_exclusive"), "w") as handle:
                handle.write("1")
        assert caught.value.errno == errno.EACCES
        with pytest.raises(OSError) as caught:
            with open(os.path.join(top, "cpuset.cpu_exclusive"), "w") as handle:
                handle.write("1")
        assert caught.value.errno == errno.EINVAL
        assert read(os.path.join(child, "cpuset.cpu_exclusive")) == "0"
    finally:
        for path in (child, top):
            if os.path.isdir(path):
                os.rmdir(path)


def test_module_in_own_cgroup_reports_blockers_and_check_mode_changes_nothing(tmp_path):
    top = "hpcvirt-itest-%s" % uuid.uuid4().hex[:6]
    args = {"housekeeping": "0", "partitions": [{"name": "x", "cpus": "1"}], "machine_cgroup": top,
            "layout_file": str(tmp_path / "layout.json"), "allowed_dirs": [str(tmp_path)]}
    try:
        checked = run_module("hpcvirt.regime.partition", args, check=True, diff=True)
        assert checked["changed"] is True
        assert not os.path.exists(os.path.join(CPUSET, top))
        assert any(key.startswith("cgroup_create") for key in checked["diff"]["after"])
        done = run_module("hpcvirt.regime.partition", args)
        assert done["plan"] == checked["plan"]
        assert "cpu_exclusive=0" in done["exclusivity"]["x"]["blockers"][0]
        again = run_module("hpcvirt.regime.partition", args)
        assert again["changed"] is False
        gone = run_module("hpcvirt.regime.partition", {"state": "absent", "machine_cgroup": top,
                                                       "layout_file": args["layout_file"],
                                                       "allowed_dirs": [str(tmp_path)]})
        assert gone["changed"] is True
        assert not os.path.exists(os.path.join(CPUSET, top))
        assert not os.path.exists(args["layout_file"])
    finally:
        for path in (os.path.join(CPUSET, top, "hpcvirt-x.partition"), os.path.join(CPUSET, top)):
            if os.path.isdir(path):
                os.rmdir(path)


BAD = [
    ({"housekeeping": "0", "partitions": [{"name": "a", "cpus": "1"}, {"name": "b", "cpus": "1"}]},
     "partitions[1].cpus: CPU 1 of partition 'b' is already in partition 'a'"),
    ({"housekeeping": "0", "partitions": [{"name": "a", "cpus": "7"}]}, "partitions[0].cpus: '7' names CPU 7, beyond the last CPU this node can have"),
    ({"housekeeping": "", "partitions": []}, "housekeeping: must name at least one online CPU"),
    ({"housekeeping": "0", "partitions": [{"name": "a", "cpus": "1", "numa_nodes": [3]}]},
     "partitions[0].numa_nodes: NUMA node(s) 3 do not exist"),
    ({"housekeeping": "0", "partitions": [{"name": "a", "cpus": "1", "hugepages": {"size": "2M", "count": 10000000}}]},
     "partitions: hugepages: NUMA node 0 needs 10000000 more 2048 kB pages"),
]


def test_bad_input_is_refused_and_changes_nothing(tmp_path):
    """Every refusal in one playbook run (each a separate task), each naming the field, none changing a file."""
    top = "hpcvirt-itest-%s" % uuid.uuid4().hex[:6]
    out = str(tmp_path / "results.json")
    cases = [dict(args, machine_cgroup=top, layout_file=str(tmp_path / "layout.json"), irq_steering=True,
                  allowed_dirs=[str(tmp_path)])
             for args, _unused in BAD]
    play = json.dumps([{
        "name": "Bad input", "hosts": "localhost", "gather_facts": False, "connection": "local",
        "vars": {"ansible_python_interpreter": "/usr/bin/python3", "cases": cases},
        "tasks": [
            {"name": "Run", "hpcvirt.regime.partition": "{{ item }}", "loop": "{{ cases }}",
             "register": "results", "ignore_errors": True},
            {"name": "Save", "ansible.builtin.copy": {"content": "{{ results.results | to_json }}", "dest": out}},
        ],
    }])
    before = (read(HUGEPAGES), irq_affinities())
    proc = run_playbook(play + "\n")
    assert os.path.exists(out), proc.stdout + proc.stderr
    results = json.load(open(out))
    for (_unused, message), result in zip(BAD, results):
        assert result.get("failed") is True
        assert message in result["msg"]
    assert (read(HUGEPAGES), irq_affinities()) == before
    assert not os.path.exists(os.path.join(CPUSET, top))
    assert not os.path.exists(str(tmp_path / "layout.json"))


def test_taking_cpus_from_a_pinned_running_guest_is_refused(tmp_path, guest_factory):
    import libvirt
    top = "hpcvirt-itest-%s" % uuid.uuid4().hex[:6]
    layout = str(tmp_path / "layout.json")
    args = {"housekeeping": "0", "partitions": [{"name": "pinned", "cpus": "1"}], "machine_cgroup": top,
            "layout_file": layout, "allowed_dirs": [os.path.dirname(layout)]}
    try:
        assert run_module("hpcvirt.regime.partition", args)["changed"] is True
        dom = guest_factory(wait=False)
        dom.pinVcpuFlags(0, (False, True), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        cgroup = os.path.join(CPUSET, top, "hpcvirt-pinned.partition")
        result = run_module("hpcvirt.regime.partition", {"state": "absent", "machine_cgroup": top, "layout_file": layout,
                                                         "allowed_dirs": [os.path.dirname(layout)]})
        assert result.get("failed") is True
        assert "would lose CPUs 1 that running guest" in result["msg"]
        assert "placement module" in result["msg"]
        assert os.path.isdir(cgroup) and os.path.exists(layout)
    finally:
        for path in (os.path.join(CPUSET, top, "hpcvirt-pinned.partition"), os.path.join(CPUSET, top)):
            if os.path.isdir(path):
                os.rmdir(path)


@pytest.mark.parametrize("extra, words", [
    ({"machine_cgroup": "../.."}, "machine_cgroup: '../..' is not a cgroup name below the cpuset root"),
    ({"machine_cgroup": "/sys/fs/cgroup/cpuset/x"}, "machine_cgroup: '/sys/fs/cgroup/cpuset/x' is not a cgroup name"),
    ({"layout_file": "/root/.ssh/layout.json"}, "layout_file: /root/.ssh/layout.json is outside the directories"),
    ({"layout_file": "/etc/hpcvirt/../shadow"}, "layout_file: /etc/hpcvirt/../shadow (/etc/shadow) is outside"),
])
def test_paths_and_cgroup_names_are_confined(extra, words):
    args = dict({"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]}, **extra)
    before = sorted(os.listdir("/sys/fs/cgroup/cpuset"))
    result = run_module("hpcvirt.regime.partition", args)
    assert result["failed"] is True and result["msg"].startswith(words), result["msg"]
    assert "Traceback" not in result["msg"] and result["changed"] is False
    assert sorted(os.listdir("/sys/fs/cgroup/cpuset")) == before
    assert not os.path.exists("/root/.ssh/layout.json")
