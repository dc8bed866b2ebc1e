"""Housekeeping confinement planning against a fake /proc and cgroup tree."""

import json
import os

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _confine
from ansible_collections.hpcvirt.regime.plugins.module_utils._confine import (
    ConfineError,
    parse_stat,
    plan_confine,
    plan_release,
    read_back,
    read_node,
)

MOUNTINFO = ("30 25 0:26 / /sys/fs/cgroup/cpuset rw,relatime shared:9 - cgroup cgroup rw,cpuset\n"
             "31 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n")


def stat_line(pid, comm, flags, starttime=100):
    # pid (comm) state ppid pgrp session tty tpgid flags ... field 22 = starttime
    fields = ["S", "1", str(pid), str(pid), "0", "-1", str(flags)] + ["0"] * 12 + [str(starttime)] + ["0"] * 10
    return "%d (%s) %s\n" % (pid, comm, " ".join(fields))


def add_task(files, pid, comm, cgroup="/", allowed="0-3", flags=0x400000, threads=None, starttime=100):
    files["proc/%d/stat" % pid] = stat_line(pid, comm, flags, starttime)
    files["proc/%d/cgroup" % pid] = "12:pids:/\n3:cpuset:%s\n0::/\n" % cgroup
    for tid, cpus in (threads or {pid: allowed}).items():
        files["proc/%d/task/%d/status" % (pid, tid)] = "Name:\t%s\nCpus_allowed_list:\t%s\n" % (comm, cpus)


KTHREAD = 0x00200000 | 0x40
PERCPU = KTHREAD | 0x04000000


@pytest.fixture
def node(tmp_path):
    """A 4-CPU node without systemd: init, sshd (two threads), a pinned job, kthreadd, a per-CPU
    ksoftirqd, a guest's QEMU in libvirt's machine cgroup and a task in someone else's cgroup."""

    def make(extra=None, state=None, housekeeping_cgroup=None):
        files = {
            "proc/self/mountinfo": MOUNTINFO,
            "proc/1/comm": "init\n",
            "sys/devices/system/cpu/online": "0-3\n",
            "sys/devices/system/node/online": "0\n",
            "sys/devices/virtual/workqueue/cpumask": "f\n",
            "proc/irq/default_smp_affinity": "f\n",
            "sys/fs/cgroup/cpuset/cpuset.cpus": "0-3\n",
            "sys/fs/cgroup/cpuset/machine/cpuset.cpus": "1-3\n",
            "sys/fs/cgroup/unified/cgroup.controllers": "\n",
        }
        add_task(files, 1, "init")
        add_task(files, 2, "kthreadd", flags=KTHREAD)
        add_task(files, 12, "ksoftirqd/3", allowed="3", flags=PERCPU)
        add_task(files, 40, "rcu_gp", flags=KTHREAD)
        add_task(files, 300, "sshd", threads={300: "0-3", 301: "0-3"})
        add_task(files, 400, "job (pinned)", allowed="2")
        add_task(files, 500, "qemu-system-x86", cgroup="/machine/qemu-1-g1.libvirt-qemu/emulator", allowed="1-3")
        add_task(files, 600, "someone", cgroup="/theirs", allowed="0-3")
        if housekeeping_cgroup:
            files["sys/fs/cgroup/cpuset/hpcvirt-housekeeping/cpuset.cpus"] = housekeeping_cgroup["cpus"] + "\n"
            files["sys/fs/cgroup/cpuset/hpcvirt-housekeeping/cgroup.procs"] = \
                "".join("%d\n" % p for p in housekeeping_cgroup["pids"])
        if state is not None:
            files["var/lib/hpcvirt/confine.json"] = json.dumps(state)
        files.update(extra or {})
        for path, content in files.items():
            target = tmp_path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        return str(tmp_path)

    return make


def by_action(plan):
    return {step.action.name: step for step in plan}


def test_parse_stat_with_spaces_and_parentheses_in_comm():
    assert parse_stat(stat_line(7, "a (b) c", 0x40, 4242)) == ("a (b) c", 0x40, 4242)


def test_read_node_classifies_every_task(node):
    snapshot = read_node(node())
    kinds = {t.pid: _confine.classify(t, snapshot) for t in snapshot["tasks"]}
    assert kinds == {1: "move", 2: "set_affinity", 12: "per_cpu_kthread", 40: "set_affinity", 300: "move",
                     400: "move", 500: "guest", 600: "other_cgroup"}
    sshd = [t for t in snapshot["tasks"] if t.pid == 300][0]
    assert sorted(sshd.threads) == [300, 301]


def test_plan_confine_without_systemd(node):
    plan = plan_confine(read_node(node()), "0")
    steps = by_action(plan)
    assert [s.action.name for s in plan] == [
        "record_confinement", "housekeeping_cgroup", "move_tasks", "kthread_affinity", "workqueue_cpumask",
        "irq_default_affinity"]
    assert steps["housekeeping_cgroup"].after == "0" and steps["housekeeping_cgroup"].detail["mems"] == "0"
    # Guests, someone else's cgroup and kernel threads are not moved into the cgroup.
    assert steps["move_tasks"].detail["pids"] == [1, 300, 400]
    # kthreadd first, so that what it spawns inherits; per-CPU ksoftirqd is not touched.
    assert steps["kthread_affinity"].detail["pids"] == [2, 40]
    assert steps["workqueue_cpumask"].detail["mask"] == "00000001"
    record = steps["record_confinement"].after
    assert record["pinned_tasks"] == {"400:100": "2"}      # given back on release
    assert record["kthreads"] == {"2:100": "0-3", "40:100": "0-3"}
    assert record["workqueue_mask"] == "0-3" and record["irq_default"] == "0-3"


def test_plan_confine_is_empty_once_confined(node):
    state = plan_confine(read_node(node()), "0-1").steps[0].after
    root = node(state=state, housekeeping_cgroup={"cpus": "0-1", "pids": [1, 300, 400]}, extra={
        "sys/devices/virtual/workqueue/cpumask": "3\n",
        "proc/irq/default_smp_affinity": "3\n",
        "proc/1/cgroup": "3:cpuset:/hpcvirt-housekeeping\n",
        "proc/300/cgroup": "3:cpuset:/hpcvirt-housekeeping\n",
        "proc/400/cgroup": "3:cpuset:/hpcvirt-housekeeping\n",
        "proc/1/task/1/status": "Cpus_allowed_list:\t0-1\n",
        "proc/300/task/300/status": "Cpus_allowed_list:\t0-1\n",
        "proc/300/task/301/status": "Cpus_allowed_list:\t0-1\n",
        "proc/400/task/400/status": "Cpus_allowed_list:\t0-1\n",
        "proc/2/task/2/status": "Cpus_allowed_list:\t0-1\n",
        "proc/40/task/40/status": "Cpus_allowed_list:\t0-1\n",
    })
    snapshot = read_node(root)
    assert not plan_confine(snapshot, "0-1")
    back = read_back(snapshot, "0-1")
    assert back["escaped"] == [] and back["held"]
    assert [e["comm"] for e in back["cannot_move"]] == ["ksoftirqd/3"]
    assert [e["comm"] for e in back["left"]] == ["someone"]
    assert back["guest_tasks_untouched"] == 1


def test_read_back_names_what_escaped(node):
    back = read_back(read_node(node()), "0")
    assert not back["held"]
    assert {e["comm"] for e in back["escaped"]} == {"init", "kthreadd", "rcu_gp", "sshd", "job (pinned)"}


def test_plan_release_gives_back_what_was_recorded(node):
    state = plan_confine(read_node(node()), "0").steps[0].after
    root = node(state=state, housekeeping_cgroup={"cpus": "0", "pids": [1, 300, 400]}, extra={
        "sys/devices/virtual/workqueue/cpumask": "1\n",
        "proc/irq/default_smp_affinity": "1\n",
        "proc/400/cgroup": "3:cpuset:/hpcvirt-housekeeping\n",
        "proc/400/task/400/status": "Cpus_allowed_list:\t0\n",
        "proc/2/task/2/status": "Cpus_allowed_list:\t0\n",
        "proc/40/task/40/status": "Cpus_allowed_list:\t0\n",
    })
    plan = plan_release(read_node(root))
    steps = by_action(plan)
    assert [s.action.name for s in plan] == [
        "release_tasks", "restore_affinity", "remove_housekeeping_cgroup", "restore_affinity",
        "workqueue_cpumask", "irq_default_affinity", "record_confinement"]
    assert steps["release_tasks"].detail["pids"] == [1, 300, 400]
    assert plan.steps[1].after == {"400:100": "2"}
    assert plan.steps[3].after == {"2:100": "0-3", "40:100": "0-3"}
    assert steps["workqueue_cpumask"].detail["mask"] == "0000000f"


def test_plan_release_skips_a_recycled_pid(node):
    state = plan_confine(read_node(node()), "0").steps[0].after
    root = node(state=state, housekeeping_cgroup={"cpus": "0", "pids": []},
                extra={"proc/40/stat": stat_line(40, "other", KTHREAD, starttime=999),
                       "proc/40/task/40/status": "Cpus_allowed_list:\t0\n",
                       "proc/2/task/2/status": "Cpus_allowed_list:\t0\n"})
    plan = plan_release(read_node(root))
    kthreads = [s for s in plan if s.name == "restore_affinity" and s.target == "kernel threads"][0]
    assert kthreads.after == {"2:100": "0-3"}


def test_plan_release_on_an_unconfined_node_is_empty(node):
    assert not plan_release(read_node(node()))


def test_systemd_node_sets_allowed_cpus_per_unit(node):
    calls = []

    def runner(argv):
        calls.append(argv)
        return 0, "" if argv[-1] != "init.scope" else "0\n", ""

    root = node(extra={"proc/1/comm": "systemd\n"})
    snapshot = read_node(root, runner=runner)
    plan = plan_confine(snapshot, "0")
    units = [(s.target, s.before, s.after) for s in plan if s.name == "systemd_allowed_cpus"]
    assert units == [("system.slice", "all", "0"), ("user.slice", "all", "0")]
    assert not any(s.name in ("housekeeping_cgroup", "move_tasks") for s in plan)
    assert calls[0] == ["systemctl", "show", "--property=AllowedCPUs", "--value", "system.slice"]
    applied = []

    def apply_runner(argv):
        applied.append(argv)
        return 0, "", ""

    only_units = _confine.Plan([s for s in plan if s.name == "systemd_allowed_cpus"])
    assert _confine.apply_plan(only_units, snapshot, runner=apply_runner) == []
    assert applied == [["systemctl", "set-property", "--runtime", "system.slice", "AllowedCPUs=0"],
                       ["systemctl", "set-property", "--runtime", "user.slice", "AllowedCPUs=0"]]


@pytest.mark.parametrize("housekeeping, message", [
    ("", "at least one"),
    ("7", "not online"),
    ("0-x", "housekeeping"),
])
def test_bad_housekeeping_is_refused(node, housekeeping, message):
    with pytest.raises(ConfineError, match=message):
        plan_confine(read_node(node()), housekeeping)


def test_apply_writes_cgroup_masks_and_record_into_the_tree(node):
    root = node()
    snapshot = read_node(root)
    plan = _confine.Plan([s for s in plan_confine(snapshot, "0")
                          if s.name in ("housekeeping_cgroup", "workqueue_cpumask", "record_confinement")])
    assert _confine.apply_plan(plan, snapshot) == []
    cg = os.path.join(root, "sys/fs/cgroup/cpuset/hpcvirt-housekeeping")
    assert open(os.path.join(cg, "cpuset.cpus")).read() == "0"
    assert open(os.path.join(cg, "cpuset.mems")).read() == "0"
    assert open(os.path.join(root, "sys/devices/virtual/workqueue/cpumask")).read() == "00000001"
    assert json.load(open(os.path.join(root, "var/lib/hpcvirt/confine.json")))["housekeeping"] == "0"


def test_a_run_killed_after_its_first_steps_is_released_exactly(node):
    root = node()
    snapshot = read_node(root)
    plan = plan_confine(snapshot, "0")
    # Killed after the record and the cgroup: nothing else changed.
    assert _confine.apply_plan(_confine.Plan(plan.steps[:2]), snapshot) == []
    again = read_node(root)
    assert again["state"]["kthreads"] == {"2:100": "0-3", "40:100": "0-3"}
    # A re-run keeps the originals it recorded first.
    assert plan_confine(again, "0").steps[0].after["kthreads"] == again["state"]["kthreads"]
    release = plan_release(again)
    # (a real cgroup directory is removed by rmdir; this fake one holds plain files, so only the plan)
    assert [s.action.name for s in release] == ["remove_housekeeping_cgroup", "record_confinement"]
