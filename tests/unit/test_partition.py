"""The partition planner over recorded topologies: CPU picking, validation, plan order, idempotence."""

import json
import os

import pytest

from partition_helpers import execute_plan, fake_cgroupfs_rmdir, fake_node, node_at, snapshot

from ansible_collections.hpcvirt.regime.plugins.module_utils import _hugepages
from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import StepFailed, Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology

SERVER = "partition-2s-4numa-smt2"


@pytest.fixture(autouse=True)
def cgroupfs_semantics(monkeypatch):
    monkeypatch.setattr(os, "rmdir", _rmdir_like_cgroupfs(os.rmdir))


def _rmdir_like_cgroupfs(real_rmdir):
    def rmdir(path, *args, **kwargs):
        if "/sys/fs/cgroup/" in str(path) and str(path).startswith("/tmp/"):
            return fake_cgroupfs_rmdir(path)
        return real_rmdir(path, *args, **kwargs)
    return rmdir


def topo(sysfs_tree, name):
    return read_topology(sysfs_tree(name))


def spec(housekeeping, *partitions, **extra):
    data = {"housekeeping": housekeeping, "partitions": list(partitions), "pool": "auto",
            "irq_steering": False, "kernel_args": []}
    data.update(extra)
    return data


def cpus_of(layout, name):
    return format_cpulist(next(p["cpus"] for p in layout["partitions"] if p["name"] == name))


# ---- picking --------------------------------------------------------------------------------

def test_count_takes_whole_cores_on_one_node_best_fit(sysfs_tree):
    topology = topo(sysfs_tree, SERVER)
    layout = part.resolve(spec("0,64", {"name": "a", "count": 8}), topology)
    # Node 0 lost a core to housekeeping, so it fits 8 CPUs with the least left over.
    assert cpus_of(layout, "a") == "1-4,65-68"
    assert layout["partitions"][0]["mems"] == frozenset([0])


def test_count_is_deterministic_and_keeps_siblings_together(sysfs_tree):
    topology = topo(sysfs_tree, SERVER)
    first = part.resolve(spec("0,64", {"name": "a", "count": 16}, {"name": "b", "count": 32}), topology)
    second = part.resolve(spec("0,64", {"name": "a", "count": 16}, {"name": "b", "count": 32}), topology)
    assert first == second
    for p in first["partitions"]:
        for cpu in p["cpus"]:
            assert topology.cpus[cpu].siblings <= p["cpus"]
        assert len(topology.nodes_of(p["cpus"])) == 1


def test_count_spans_nodes_only_when_no_node_fits(sysfs_tree):
    topology = topo(sysfs_tree, SERVER)
    layout = part.resolve(spec("0,64", {"name": "big", "count": 40}), topology)
    cpus = parse_cpulist(cpus_of(layout, "big"))
    assert len(cpus) == 40
    assert topology.nodes_of(cpus) == frozenset([0, 1])


def test_count_honours_numa_nodes(sysfs_tree):
    topology = topo(sysfs_tree, SERVER)
    layout = part.resolve(spec("0,64", {"name": "n2", "count": 4, "numa_nodes": [2]}), topology)
    assert cpus_of(layout, "n2") == "32,33,96,97"


def test_existing_partition_that_satisfies_its_spec_never_moves(sysfs_tree):
    topology = topo(sysfs_tree, SERVER)
    have = {"a": parse_cpulist("40,104")}
    layout = part.resolve(spec("0,64", {"name": "a", "count": 2}), topology, have)
    assert cpus_of(layout, "a") == "40,104"
    # Asking for more moves it (it no longer satisfies the spec).
    layout = part.resolve(spec("0,64", {"name": "a", "count": 4}), topology, have)
    assert cpus_of(layout, "a") == "1,2,65,66"


def test_adjacent_smt_pairs(sysfs_tree):
    topology = topo(sysfs_tree, "partition-smt-adjacent")
    layout = part.resolve(spec("0-1", {"name": "a", "count": 4}), topology)
    assert cpus_of(layout, "a") == "2-5"
    assert format_cpulist(layout["pool"]) == "6,7"


def test_two_cpu_machine_pool_falls_back_to_housekeeping(sysfs_tree):
    topology = topo(sysfs_tree, "partition-2cpu")
    layout = part.resolve(spec("0", {"name": "p1", "count": 1}), topology)
    assert cpus_of(layout, "p1") == "1"
    assert format_cpulist(layout["pool"]) == "0"


def test_kernel_args_are_reported_not_written(sysfs_tree):
    topology = topo(sysfs_tree, "partition-2cpu")
    layout = part.resolve(spec("0", {"name": "p1", "cpus": "1"}, kernel_args=["isolcpus", "nohz_full"]), topology)
    needed, args = part.kernel_args_needed(layout, topology.cmdline)
    assert needed is True
    assert args == ["isolcpus=managed_irq,domain,1", "nohz_full=1"]


# ---- plans on fake nodes --------------------------------------------------------------------

def carve(root, the_spec, guest_pins=None, apply=True, layout_file=None):
    layout_file = layout_file or os.path.join(root, "etc/hpcvirt/layout.json")
    layout, current = part.prepare(the_spec, node_at(root), guest_pins or {})
    plan, report = part.build_plan(layout, current, layout_file, record_extra={"pool_auto": True})
    if apply:
        execute_plan(plan, root)
    return plan, report


def test_first_run_plan_then_second_run_is_empty(tmp_path):
    root = fake_node(tmp_path, "partition-2cpu", irqs={"24": "0-1", "25": "0"})
    the_spec = spec("0", {"name": "p1", "count": 1, "hugepages": {"size": "2M", "count": 8}}, irq_steering=True)
    predicted, _unused = carve(root, the_spec, apply=False)
    plan, report = carve(root, the_spec)
    assert plan.to_list() == predicted.to_list()
    actions = [s.action for s in plan]
    assert actions[0] == "hugepages"
    assert actions[-1] == "layout_file"
    assert "irq_affinity" in actions
    machine = os.path.join(root, "sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition")
    assert open(os.path.join(machine, "cpuset.cpus")).read().strip() == "1"
    assert open(os.path.join(root, "proc/irq/24/smp_affinity_list")).read().strip() == "0"
    assert open(_hugepages.node_path(0, 2048, root)).read().strip() == "8"
    # v1: the machine cgroup is not exclusive, so the kernel cannot hold the partition exclusive.
    assert report["exclusivity"]["p1"]["enforced"] is False
    assert "cpu_exclusive=0" in report["exclusivity"]["p1"]["blockers"][0]
    second, _unused = carve(root, the_spec)
    assert second.to_list() == []


def test_absent_restores_the_original_layout(tmp_path):
    root = fake_node(tmp_path, "partition-2cpu", irqs={"24": "0-1"},
                     extra={"/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages": "3"})
    before = snapshot(root)
    carve(root, spec("0", {"name": "p1", "count": 1, "hugepages": {"count": 8}}, irq_steering=True))
    # Others' 3 pages stay: ours come on top.
    assert open(_hugepages.node_path(0, 2048, root)).read().strip() == "11"
    carve(root, None)
    assert _normalised(snapshot(root)) == _normalised(before)


def _normalised(snap):
    """Contents as the kernel would read them back (cpu-lists canonical, no trailing newline)."""
    out = {}
    for path, text in snap.items():
        if text is None:
            continue
        out[path] = format_cpulist(parse_cpulist(text)) if path.endswith("smp_affinity_list") else text.strip()
    return out


def test_order_widens_parent_before_children_and_narrows_after(tmp_path):
    root = fake_node(tmp_path, SERVER, machine_cpus="0-63")
    plan, _unused = carve(root, spec("0,64", {"name": "a", "cpus": "96-99"}, pool="1-8"), apply=False)
    steps = [(s.action, os.path.basename(s.target), s.after) for s in plan]
    widen = steps.index(("cgroup_write", "cpuset.cpus", "0-63,96-99"))
    child = steps.index(("cgroup_write", "cpuset.cpus", "96-99"))
    narrow = steps.index(("cgroup_write", "cpuset.cpus", "1-8,96-99"))
    assert widen < child < narrow


def test_resizing_drops_exclusivity_before_changing_cpus(tmp_path):
    root = fake_node(tmp_path, SERVER, extra={
        "/sys/fs/cgroup/cpuset/machine/cpuset.cpu_exclusive": "1",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-a.partition/cpuset.cpus": "1,65",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-a.partition/cpuset.mems": "0",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-a.partition/cpuset.cpu_exclusive": "1",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-a.partition/cgroup.procs": ""})
    plan, report = carve(root, spec("0,64", {"name": "a", "cpus": "1-2,65-66"}), apply=False)
    steps = [(os.path.basename(s.target), s.after) for s in plan]
    assert steps.index(("cpuset.cpu_exclusive", "0")) < steps.index(("cpuset.cpus", "1,2,65,66")) \
        < steps.index(("cpuset.cpu_exclusive", "1"))
    assert report["exclusivity"]["a"]["enforced"] is True


def test_removing_one_partition_returns_its_cpus_to_the_pool(tmp_path):
    root = fake_node(tmp_path, SERVER)
    carve(root, spec("0,64", {"name": "a", "count": 4}, {"name": "b", "count": 4}))
    record = json.load(open(os.path.join(root, "etc/hpcvirt/layout.json")))
    b_cpus = parse_cpulist(next(p["cpus"] for p in record["partitions"] if p["name"] == "b"))
    assert not b_cpus & parse_cpulist(record["pool"])
    the_spec = part.record_to_spec(record)
    the_spec["partitions"] = [p for p in the_spec["partitions"] if p["name"] != "b"]
    carve(root, the_spec)
    record = json.load(open(os.path.join(root, "etc/hpcvirt/layout.json")))
    assert b_cpus <= parse_cpulist(record["pool"])
    assert not os.path.exists(os.path.join(root, "sys/fs/cgroup/cpuset/machine/hpcvirt-b.partition"))


def test_hugepage_shortfall_is_rolled_back(tmp_path, monkeypatch):
    root = fake_node(tmp_path, "partition-2cpu")
    real_set = _hugepages.set_pages

    def stingy_kernel(path, count):
        # A fake kernel that grants at most 5 pages, as a fragmented node would.
        return real_set(path, min(count, 5))

    monkeypatch.setattr(_hugepages, "set_pages", stingy_kernel)
    with pytest.raises(StepFailed, match="asked the kernel for 8 pages and it granted 5; rolled"):
        carve(root, spec("0", {"name": "p1", "count": 1, "hugepages": {"count": 8}}))
    assert open(_hugepages.node_path(0, 2048, root)).read().strip() == "0"
    assert not os.path.exists(os.path.join(root, "sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition"))


# ---- every refusal: the message names the field and nothing changes -------------------------

PINNED = {"g1": [parse_cpulist("1")]}
REFUSALS = [
    ("overlapping partitions",
     spec("0,64", {"name": "a", "cpus": "1-3"}, {"name": "b", "cpus": "3-4"}), None,
     "partitions[1].cpus: CPU 3 of partition 'b' is already in partition 'a'"),
    ("partition overlaps housekeeping",
     spec("0-3", {"name": "a", "cpus": "3-4"}), None, "partitions[0].cpus: CPU 3 of partition 'a' is already in housekeeping"),
    ("cpus not online", spec("0", {"name": "a", "cpus": "200-201"}), None,
     "partitions[0].cpus: CPUs 200,201 are not online"),
    ("housekeeping not online", spec("500"), None, "housekeeping: CPUs 500 are not online"),
    ("empty housekeeping", spec(""), None, "housekeeping: must name at least one online CPU"),
    ("numa mismatch", spec("0", {"name": "a", "cpus": "15-16", "numa_nodes": [0]}), None,
     "partitions[0].cpus: partition 'a' spans NUMA node(s) 1 but numa_nodes says 0"),
    ("count not whole cores", spec("0,64", {"name": "a", "count": 3}), None,
     "partitions[0].count: cannot find 3 CPUs as whole cores (2 thread(s) per core)"),
    ("cpus and count", spec("0", {"name": "a", "cpus": "1", "count": 1}), None,
     "partitions[0] (a): give exactly one of cpus or count"),
    ("pool overlaps partition", spec("0", {"name": "a", "cpus": "1-2"}, pool="2-5"), None,
     "pool: CPUs 2 are in partitions"),
    ("hugepages beyond free memory",
     spec("0", {"name": "a", "cpus": "1", "hugepages": {"size": "1G", "count": 1000}}), None,
     "partitions: hugepages: NUMA node 0 needs 1000 more 1048576 kB pages"),
    ("running guest pinned", spec("0", {"name": "p1", "cpus": "2"}), PINNED,
     "partition 'p1' would lose CPUs 1 that running guest 'g1' is pinned to (1); move the guest "
     "first with the placement module"),
    ("removing a partition with a pinned guest", None, PINNED,
     "partition 'p1' would lose CPUs 1 that running guest 'g1' is pinned to"),
]


@pytest.mark.parametrize("the_spec,pins,message", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_field_and_change_nothing(tmp_path, the_spec, pins, message):
    root = fake_node(tmp_path, SERVER, extra={
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition/cpuset.cpus": "1",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition/cpuset.mems": "0",
        "/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition/cgroup.procs": ""})
    before = snapshot(root)
    with pytest.raises(part.LayoutError) as caught:
        carve(root, the_spec, guest_pins=pins)
    assert message in str(caught.value)
    assert snapshot(root) == before
