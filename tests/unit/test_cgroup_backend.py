"""The cgroup v2 backend against a FAKE v2 tree.

cpuset lives on cgroup v1 on the development machine (hybrid mode), and a controller can be bound
to one hierarchy only, so a real v2 cpuset cannot be mounted there. ``FakeV2Kernel`` stands in for
the kernel and enforces v2's partition rules on plain files: a partition is valid only below a valid
partition root, with CPUs no sibling's cpuset.cpus overlaps; otherwise it reads back
``root invalid (reason)`` as the kernel does; cpuset.cpus.exclusive must not overlap a sibling's.
"""

import errno
import json
import os

import pytest

from partition_helpers import execute_plan, fake_node, node_at, v2_cgroup

from ansible_collections.hpcvirt.regime.plugins.module_utils import _cgroup_backend as backend
from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text, read_topology

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
    kernel = FakeV2Kernel(backend.write_file)
    monkeypatch.setattr(backend, "write_file", kernel.write)
    return kernel


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
    root = fake_node(tmp_path, "partition-2cpu", version=2)
    plan, report, state = run(root)
    assert not [s for s in plan if s.target.endswith(backend.V2_PARTITION)]
    assert report["exclusivity"]["p1"]["enforced"] is False
    assert "not a valid partition root" in report["exclusivity"]["p1"]["blockers"][0]
    assert state == "member"


def test_v2_below_a_root_parent_becomes_a_partition_root(tmp_path, fake_v2_kernel):
    root = fake_node(tmp_path, "partition-2cpu", version=2,
                     extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    plan, report, state = run(root)
    keys = [os.path.basename(s.target) for s in plan]
    assert keys.index(backend.V2_EXCLUSIVE) < keys.index(backend.V2_PARTITION)
    assert report["exclusivity"]["p1"]["enforced"] is True
    assert state == "root"
    # A second run plans nothing.
    plan, _unused, _unused = run(root)
    assert plan.to_list() == []


def test_v2_guest_overlapping_is_a_blocker(tmp_path, fake_v2_kernel):
    root = fake_node(tmp_path, "partition-2cpu", version=2, guests={"machine-qemu-1-g.scope": "0-1"},
                     extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    plan, report, state = run(root)
    assert "machine-qemu-1-g.scope" in report["exclusivity"]["p1"]["blockers"][0]
    assert state == "member"


def test_v2_invalid_root_is_read_back(tmp_path, fake_v2_kernel):
    # A guest appears between plan and apply: the kernel then says why the partition is invalid.
    root = fake_node(tmp_path, "partition-2cpu", version=2,
                     extra={"/sys/fs/cgroup/machine.slice/cpuset.cpus.partition": "root"})
    node = node_at(root)
    cgroups = node.cgroups
    layout, current = part.prepare(SPEC, node, {})
    plan, _unused = part.build_plan(layout, current, os.path.join(root, "etc/hpcvirt/layout.json"))
    from conftest import materialise
    materialise(root, v2_cgroup("/sys/fs/cgroup/machine.slice/late.scope", "1"))
    execute_plan(plan, root)
    state = backend.read_back_state(os.path.join(cgroups.machine.path, "hpcvirt-p1.partition"))
    assert state == "root invalid (Cpu list in cpuset.cpus not exclusive)"
