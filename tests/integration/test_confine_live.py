"""Housekeeping confinement on this machine's real kernel (cgroup v1 cpuset, no systemd).

A busy process started as an ordinary host task is moved off the partition CPU by confinement,
read back from every task's allowed CPUs, and may use the CPU again after the release. Runs
``_confine`` directly (not yet wired into the partition plan), on a real partition layout.
"""

import os
import subprocess
import sys

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _confine
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist
from conftest import run_module


def allowed(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("Cpus_allowed_list:"):
                return parse_cpulist(line.split(":", 1)[1].strip())
    raise AssertionError("no Cpus_allowed_list for %d" % pid)


def read(path):
    with open(path) as handle:
        return handle.read().strip()


@pytest.fixture
def partition_p1():
    if os.cpu_count() < 2:
        pytest.fail("needs two CPUs")
    carved = run_module("hpcvirt.regime.partition", {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]})
    assert not carved.get("failed"), carved.get("msg")
    yield
    snapshot = _confine.read_node("/")
    _confine.apply_plan(_confine.plan_release(snapshot), snapshot)
    assert not run_module("hpcvirt.regime.partition", {"state": "absent"}).get("failed")


def test_confinement_moves_a_busy_host_task_off_the_partition_and_back(partition_p1):
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    wq_before = read("/sys/devices/virtual/workqueue/cpumask")
    irq_before = read("/proc/irq/default_smp_affinity")
    try:
        assert 1 in allowed(busy.pid)
        snapshot = _confine.read_node("/")
        plan = _confine.plan_confine(snapshot, "0")
        actions = [step.name for step in plan]
        assert "move_tasks" in actions and busy.pid in plan.steps[actions.index("move_tasks")].detail["pids"]
        # Planning changed nothing.
        assert not os.path.isdir("/sys/fs/cgroup/cpuset/" + _confine.HOUSEKEEPING_CGROUP)
        refused = _confine.apply_plan(plan, snapshot)
        assert all(r["what"] in ("task", "kernel thread") for r in refused), refused

        assert allowed(busy.pid) == {0}
        after = _confine.read_node("/")
        back = _confine.read_back(after, "0")
        assert back["escaped"] == [], back["escaped"]
        assert back["masks"] == {"workqueue_mask": "0", "irq_default": "0"}
        assert back["held"]
        # Every host task outside libvirt's cgroup that may move is kept off CPU 1.
        for task in after["tasks"]:
            if _confine.classify(task, after) in ("move", "confined", "set_affinity"):
                assert 1 not in task.allowed, task.to_dict()
        # A second run has nothing left to do.
        again = _confine.plan_confine(after, "0")
        assert [s.name for s in again if s.name != "kthread_affinity"] == [], again.to_list()

        release = _confine.plan_release(_confine.read_node("/"))
        _confine.apply_plan(release, _confine.read_node("/"))
        assert 1 in allowed(busy.pid)
        assert read("/sys/devices/virtual/workqueue/cpumask") == wq_before
        assert read("/proc/irq/default_smp_affinity") == irq_before
        assert not os.path.isdir("/sys/fs/cgroup/cpuset/" + _confine.HOUSEKEEPING_CGROUP)
        assert not os.path.exists("/" + _confine.STATE_FILE)
        assert not _confine.plan_release(_confine.read_node("/"))
    finally:
        busy.kill()
        busy.wait()
