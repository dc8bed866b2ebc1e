"""The cgroup v2 backend's logic against a FAKE v2 tree.

cpuset lives on cgroup v1 on the development machine (hybrid mode), so these unit tests use a fake
tree; the backend runs on a real 6.1 kernel under systemd in the molecule scenario ``production``
(tools/prodnode, docs/partition.md), and the rules ``FakeV2Kernel`` enforces are the ones that
kernel answered there: a partition is valid only below a valid partition root, with CPUs no
sibling's cpuset.cpus overlaps; otherwise the write succeeds and the file reads back
``root invalid (reason)``; cpuset.cpus.exclusive must not overlap a sibling's.
"""

import errno
import os

import pytest

from partition_helpers import execute_plan, fake_node, node_at, v2_cgroup

from ansible_collections.hpcvirt.regime.plugins.module_utils import _cgroup_backend as backend
from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

# cpuset enabled from the root down to below machine.slice, as libvirt leaves it once a guest ran.
DELEGATED = {"/sys/fs/cgroup/cgroup.subtree_control": "cpuset cpu io memory pids",
             "/sys/fs/cgroup/machine.slice/cgroup.subtree_control": "cpuset cpu io memory pids"}

SPEC = {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}], "pool": "auto",
        "irq_steering": False, "kernel_args": []}


class FakeV2Kernel:
    def __init__(self, real_write):
        self.real_write = real_write

    def siblings(self, cgroup):
        parent = os.path.dirname(cgroup)
        return [os.path.join(parent, d) for d in os.listdir(parent)
                if os.path.isdir(os.path.join(parent, d)) and os.path.join(parent, d) != cgroup]

    def write(self, path, value):
        cgroup, key = os.path.split(path)
        if key == backend.V2_PARTITION and value in ("root", "isolated"):
            value = self.partition_state(cgroup, value)
        elif key == backend.V2_EXCLUSIVE and value:
            mine = parse_cpulist(value)
            for sibling in self.siblings(cgroup):
                if parse_cpulist(read_text(sibling, backend.V2_EXCLUSIVE, "")) & mine:
                    raise backend.BackendError(backend._why(OSError(errno.EINVAL, "Invalid argument"), path))
        self.real_write(path, value)

    def partition_state(self, cgroup, mode):
        parent_state = read_text(os.path.dirname(cgroup), backend.V2_PARTITION)
        if parent_state is not None and parent_state not in ("root", "isolated"):
            return "%s invalid (Parent is not a partition root)" % mode
        mine = parse_cpulist(read_text(cgroup, "cpuset.cpus", ""))
        for sibling in self.siblings(cgroup):
            if parse_cpulist(read_text(sibling, "cpuset.cpus", "")) & mine:
                return "%s invalid (Cpu list in cpuset.cpus not exclusive)" % mode
        return mode


@pytest.fixture
def fake_v2_kernel(monkeypatch):
    kernel = FakeV2Kernel(backend._write_raw)
    monkeypatch.setattr(backend, "_write_raw", kernel.write)
    return kernel


def v2_node(tmp_path, extra=None, **kwargs):
    files = dict(DELEGATED)
    files.update(extra or {})
    return fake_node(tmp_path, "partition-2cpu", version=2, extra=files, **kwargs)


def run(root, spec=None):
    spec = SPEC if spec is None else spec
    node = node_at(root)
    cgroups = node.cgroups
    assert cgroups.cpuset_version == 2
    layout_file = os.path.join(root, "etc/hpcvirt/layout.json")
    layout, current = part.prepare(spec, node, {})
    plan, report = part.build_plan(layout, current, layout_file)
    execute_plan(plan, root)
    state = backend.read_back_state(os.path.join(cgroups.machine.path, "hpcvirt-p1.partition"))
    return plan, report, state


def test_v2_below_a_member_parent_reports_why_and_writes_no_partition(tmp_path, fake_v2_kernel):
    root = v2_node(tmp_path)
    plan, report, state = run(root)
    assert not [s for s in plan if s.target.endswith(backend.V2_PARTITION)]
    assert report["exclusivity"]["p1"]["enforced"] is False
    assert "not a valid partition root" in report["exclusivity"]["p1"]["blockers"][0]
    assert state == "member"


def test_v2_below_a_root_parent_becomes_a_partition_root(tmp_path, fake_v2_kernel):
    root = v2_node(tmp_path, extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    plan, report, state = run(root)
    keys = [os.path.basename(s.target) for s in plan]
    assert keys.index(backend.V2_EXCLUSIVE) < keys.index(backend.V2_PARTITION)
    assert report["exclusivity"]["p1"]["enforced"] is True
    assert state == "root"
    # A second run plans nothing.
    plan, _unused, _unused = run(root)
    assert plan.to_list() == []


def test_v2_guest_overlapping_is_a_blocker(tmp_path, fake_v2_kernel):
    root = v2_node(tmp_path, guests={"machine-qemu-1-g.scope": "0-1"},
                   extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    plan, report, state = run(root)
    assert "machine-qemu-1-g.scope" in report["exclusivity"]["p1"]["blockers"][0]
    assert state == "member"


def test_v2_invalid_root_is_read_back_set_back_to_member_and_fails(tmp_path, fake_v2_kernel):
    # A guest appears between plan and apply: the kernel then says why the partition is invalid;
    # the write is undone and the step fails naming the file and the kernel's reason.
    root = v2_node(tmp_path, extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    node = node_at(root)
    cgroups = node.cgroups
    layout, current = part.prepare(SPEC, node, {})
    plan, _unused = part.build_plan(layout, current, os.path.join(root, "etc/hpcvirt/layout.json"))
    from conftest import materialise
    materialise(root, v2_cgroup("/sys/fs/cgroup/machine.slice/late.scope", "1"))
    with pytest.raises(Exception) as failed:
        execute_plan(plan, root)
    path = os.path.join(cgroups.machine.path, "hpcvirt-p1.partition")
    assert os.path.join(path, backend.V2_PARTITION) in str(failed.value)
    assert "root invalid (Cpu list in cpuset.cpus not exclusive)" in str(failed.value)
    assert backend.read_back_state(path) == "member"


def test_v2_never_writes_the_machine_cgroup_systemd_owns(tmp_path, fake_v2_kernel):
    # systemctl daemon-reload rewrites machine.slice's cpuset.cpus from AllowedCPUs on the real
    # node: hpcvirt leaves that file alone and writes only its partition cgroup.
    root = v2_node(tmp_path, extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus": ""})
    plan, _report, _state = run(root)
    machine = os.path.join(node_at(root).cgroups.machine.path, "")
    written = [s.target for s in plan if s.name.startswith("cgroup")]
    assert written and all(t.startswith(machine + "hpcvirt-p1.partition") for t in written)
    assert read_text(machine, "cpuset.cpus") == ""


def test_v2_machine_cgroup_must_allow_the_layout(tmp_path, fake_v2_kernel):
    root = v2_node(tmp_path, machine_cpus="0")
    with pytest.raises(part.LayoutError) as refused:
        part.prepare(SPEC, node_at(root), {})
    message = str(refused.value)
    assert "machine.slice/cpuset.cpus.effective reads '0'" in message
    assert "AllowedCPUs=0,1" in message
    assert not os.path.exists(os.path.join(root, "sys/fs/cgroup/machine.slice/hpcvirt-p1.partition"))


@pytest.mark.parametrize("extra, expect", [
    ({"/sys/fs/cgroup/cgroup.subtree_control": "cpu memory pids"},
     "sys/fs/cgroup/cgroup.subtree_control reads 'cpu memory pids': cpuset is not enabled"),
    ({"/sys/fs/cgroup/machine.slice/cgroup.subtree_control": "memory pids"},
     "machine.slice/cgroup.subtree_control reads 'memory pids': cpuset is not enabled below the machine cgroup"),
    ({"/sys/fs/cgroup/machine.slice/hpcvirt-p1.partition/cpuset.cpus": "1",
      "/sys/fs/cgroup/machine.slice/hpcvirt-p1.partition/cpuset.cpus.partition":
      "root invalid (Parent is not a partition root)"},
     "hpcvirt-p1.partition/cpuset.cpus.partition reads 'root invalid (Parent is not a partition root)'"),
    ({"/sys/fs/cgroup/cgroup.controllers": "cpu io memory pids"},
     "sys/fs/cgroup/cgroup.controllers reads 'cpu io memory pids': the kernel offers no cpuset controller"),
])
def test_v2_unusable_layout_is_refused_before_any_change(tmp_path, fake_v2_kernel, extra, expect):
    from partition_helpers import snapshot
    root = v2_node(tmp_path, extra=extra)
    before = snapshot(root)
    node = node_at(root)
    assert any(expect in problem for problem in node.cgroups.problems())
    assert any(expect in problem for problem in node.cgroups.to_dict()["problems"])
    with pytest.raises(part.LayoutError) as refused:
        part.prepare(SPEC, node, {})
    assert expect in str(refused.value)
    assert snapshot(root) == before


def test_v2_machine_slice_absent_under_systemd_is_refused(tmp_path):
    root = v2_node(tmp_path, extra={"/proc/1/comm": "systemd"})
    import shutil
    shutil.rmtree(os.path.join(root, "sys/fs/cgroup/machine.slice"))
    problems = node_at(root).cgroups.problems()
    assert len(problems) == 1 and "machine.slice does not exist: systemd creates it" in problems[0]


def test_v2_usable_layout_has_no_problems(tmp_path):
    assert node_at(v2_node(tmp_path)).cgroups.problems() == []
