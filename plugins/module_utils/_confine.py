# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Housekeeping confinement: keep every host task that may move off the partition CPUs.

What is confined, and how:

* without systemd, a cpuset cgroup ``hpcvirt-housekeeping`` at the root of the cpuset hierarchy
  (v1 or v2) with the housekeeping CPUs, holding every user-space task of the root cgroup, the way
  ``cset shield`` does it. Tasks in any other cgroup are left where they are: libvirt's machine
  cgroup (guests, partitions) and whatever someone else made are reported, never moved. libvirt
  places guests by absolute path (``/machine``), so a confined libvirtd still starts guests there;
* with systemd, ``AllowedCPUs`` of ``system.slice``, ``user.slice`` and ``init.scope``, set at
  runtime through ``systemctl set-property --runtime`` (systemd owns those cgroups);
* both: kernel threads that accept a new affinity (kthreadd first, so new ones inherit it), the
  unbound workqueue mask ``/sys/devices/virtual/workqueue/cpumask`` and
  ``/proc/irq/default_smp_affinity``.

Per-CPU kernel threads (``PF_NO_SETAFFINITY``) and tasks that refuse are reported, never fatal.
What a confinement changed that the kernel does not remember (kernel threads' and pinned tasks'
own affinities, the two masks, the units' settings) is kept in ``/var/lib/hpcvirt/confine.json``
so that :func:`plan_release` puts it back exactly.

Reading (:func:`read_node`) is separate from planning (:func:`plan_confine`, :func:`plan_release`,
pure, unit-tested against a fake /proc tree) and from applying (:func:`apply_plan`); a plan is a
:class:`_plan.Plan`, so check mode and ``--diff`` show exactly what a run changes.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    CpuListError,
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, Step, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    read_json,
    remove_state,
    write_json_atomic,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

HOUSEKEEPING_CGROUP = "hpcvirt-housekeeping"
STATE_FILE = "var/lib/hpcvirt/confine.json"
WORKQUEUE_MASK = "sys/devices/virtual/workqueue/cpumask"
IRQ_DEFAULT = "proc/irq/default_smp_affinity"
SYSTEMD_UNITS = ("system.slice", "user.slice", "init.scope")
PF_KTHREAD = 0x00200000
PF_NO_SETAFFINITY = 0x04000000
KTHREADD = 2


class ConfineError(Exception):
    pass


class Task:
    """One process as /proc shows it: its threads' allowed CPUs and its cpuset cgroup."""

    def __init__(self, pid, comm, flags, starttime, cgroup, threads):
        self.pid = pid
        self.comm = comm
        self.flags = flags
        self.starttime = starttime      # clock ticks after boot: with the pid, names one process
        self.cgroup = cgroup            # path in the cpuset hierarchy, "/" for the root
        self.threads = threads          # tid -> frozenset of allowed CPUs

    @property
    def kthread(self):
        return bool(self.flags & PF_KTHREAD)

    @property
    def pinned_by_kernel(self):
        return bool(self.flags & PF_NO_SETAFFINITY)

    @property
    def allowed(self):
        cpus = set()
        for allowed in self.threads.values():
            cpus |= allowed
        return frozenset(cpus)

    def key(self):
        return "%d:%d" % (self.pid, self.starttime)

    def to_dict(self):
        return {"pid": self.pid, "comm": self.comm, "cgroup": self.cgroup, "allowed": format_cpulist(self.allowed)}


def parse_stat(text):
    """(comm, flags, starttime) from /proc/PID/stat; comm may hold spaces and parentheses."""
    left, right = text.find("("), text.rfind(")")
    if left < 0 or right < left:
        raise ValueError("not a stat line")
    fields = text[right + 2:].split()
    # fields[0] is field 3 (state); flags is field 9, starttime field 22.
    return text[left + 1:right], int(fields[6]), int(fields[19])


def parse_cgroup_file(text, version):
    """The task's path in the cpuset hierarchy from /proc/PID/cgroup (v1 line or the v2 line)."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if version == 1 and "cpuset" in parts[1].split(","):
            return parts[2] or "/"
        if version == 2 and parts[0] == "0" and parts[1] == "":
            return parts[2] or "/"
    return None


def _allowed_from_status(text):
    for line in (text or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return parse_cpulist(line.split(":", 1)[1].strip())
    return None


def read_tasks(root, cpuset_version):
    """Every process below ``root``/proc; those that vanish while being read are skipped."""
    tasks = []
    proc = os.path.join(root, "proc")
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = read_text(proc, "%s/stat" % entry)
        cgroup_text = read_text(proc, "%s/cgroup" % entry)
        if stat is None or cgroup_text is None:
            continue
        try:
            comm, flags, starttime = parse_stat(stat)
        except (ValueError, IndexError):
            continue
        threads = {}
        task_dir = os.path.join(proc, entry, "task")
        try:
            tids = [t for t in os.listdir(task_dir) if t.isdigit()]
        except OSError:
            tids = [entry]
        for tid in tids:
            allowed = _allowed_from_status(read_text(task_dir, "%s/status" % tid))
            if allowed is not None:
                threads[int(tid)] = allowed
        if not threads:
            continue
        cgroup = parse_cgroup_file(cgroup_text, cpuset_version) or "/"
        tasks.append(Task(pid, comm, flags, starttime, cgroup, threads))
    return sorted(tasks, key=lambda t: t.pid)


def systemd_allowed_cpus(runner, unit):
    """AllowedCPUs of a unit (a frozenset; empty means no restriction) through systemctl."""
    rc, out, err = runner(["systemctl", "show", "--property=AllowedCPUs", "--value", unit])
    if rc != 0:
        raise ConfineError("systemctl show %s failed: %s" % (unit, (err or out).strip()))
    return parse_cpulist(out.strip())


def read_node(root="/", runner=None):
    """Everything confinement plans from: cgroups, tasks, masks, systemd units, recorded state."""
    layout = detect_layout(root)
    online = parse_cpulist(read_text(root, "sys/devices/system/cpu/online", ""))
    if not online:
        raise ConfineError("cannot read the online CPUs below %s" % root)
    mems = parse_cpulist(read_text(root, "sys/devices/system/node/online", "0") or "0")
    snapshot = {
        "root": root,
        "layout": layout,
        "online": online,
        "mems": mems,
        "tasks": read_tasks(root, layout.cpuset_version) if layout.cpuset_version else [],
        "workqueue_mask": None,
        "irq_default": None,
        "housekeeping_cgroup": None,
        "systemd_units": {},
        "state": read_json(root, STATE_FILE),
    }
    for key, relpath in (("workqueue_mask", WORKQUEUE_MASK), ("irq_default", IRQ_DEFAULT)):
        text = read_text(root, relpath)
        if text is not None:
            snapshot[key] = parse_cpumask(text) & online
    if layout.cpuset_root:
        path = os.path.join(layout.cpuset_root, HOUSEKEEPING_CGROUP)
        if os.path.isdir(path):
            snapshot["housekeeping_cgroup"] = {
                "path": path,
                "cpus": parse_cpulist(read_text(path, "cpuset.cpus", "")),
                "pids": [int(p) for p in (read_text(path, "cgroup.procs", "") or "").split()],
            }
    if layout.systemd and runner is not None:
        for unit in SYSTEMD_UNITS:
            snapshot["systemd_units"][unit] = systemd_allowed_cpus(runner, unit)
    return snapshot


def _machine_rel(snapshot):
    layout = snapshot["layout"]
    if layout.machine is None:
        return None
    return "/" + os.path.relpath(layout.machine.path, layout.cpuset_root)


def classify(task, snapshot):
    """What confinement does with a task: move, set_affinity, confined, or why it stays."""
    housekeeping_rel = "/" + HOUSEKEEPING_CGROUP
    machine_rel = _machine_rel(snapshot)
    if task.kthread:
        return "per_cpu_kthread" if task.pinned_by_kernel else "set_affinity"
    if task.cgroup == housekeeping_rel or task.cgroup.startswith(housekeeping_rel + "/"):
        return "confined"
    if machine_rel and (task.cgroup == machine_rel or task.cgroup.startswith(machine_rel + "/")):
        return "guest"
    if task.cgroup == "/":
        return "move"
    return "other_cgroup"


def check_housekeeping(housekeeping, online):
    try:
        cpus = parse_cpulist(housekeeping)
    except CpuListError as exc:
        raise ConfineError("housekeeping: %s" % exc)
    if not cpus:
        raise ConfineError("housekeeping: confinement needs at least one housekeeping CPU")
    if not cpus <= online:
        raise ConfineError("housekeeping: CPUs %s are not online (online: %s)"
                           % (format_cpulist(cpus - online), format_cpulist(online)))
    return cpus


def plan_confine(snapshot, housekeeping):
    """The steps that confine the host to ``housekeeping``; empty when it already is."""
    online = snapshot["online"]
    hk = check_housekeeping(housekeeping, online)
    hk_text = format_cpulist(hk)
    layout = snapshot["layout"]
    plan = Plan()
    state = dict(snapshot["state"] or {})
    record = {
        "housekeeping": hk_text,
        "systemd": bool(layout.systemd),
        "kthreads": dict(state.get("kthreads", {})),       # "pid:starttime" -> original cpu-list
        "pinned_tasks": dict(state.get("pinned_tasks", {})),
        "workqueue_mask": state.get("workqueue_mask"),
        "irq_default": state.get("irq_default"),
        "systemd_units": dict(state.get("systemd_units", {})),
    }

    if layout.systemd:
        for unit in SYSTEMD_UNITS:
            before = snapshot["systemd_units"].get(unit, frozenset())
            if before != hk:
                record["systemd_units"].setdefault(unit, format_cpulist(before))
                plan.add(SYSTEMD_ALLOWED_CPUS, unit, format_cpulist(before) or "all", hk_text)
    elif layout.cpuset_root:
        current = snapshot["housekeeping_cgroup"]
        if current is None or current["cpus"] != hk:
            plan.add(HOUSEKEEPING_CGROUP_CREATE, os.path.join(layout.cpuset_root, HOUSEKEEPING_CGROUP),
                     format_cpulist(current["cpus"]) if current else None, hk_text,
                     mems=format_cpulist(snapshot["mems"]), version=layout.cpuset_version)
        movers = [t for t in snapshot["tasks"] if classify(t, snapshot) == "move"]
        if movers:
            for task in movers:
                if task.allowed != online and not task.allowed <= hk:
                    record["pinned_tasks"].setdefault(task.key(), format_cpulist(task.allowed))
            plan.add(MOVE_TASKS, os.path.join(layout.cpuset_root, HOUSEKEEPING_CGROUP),
                     "/", "/" + HOUSEKEEPING_CGROUP, pids=[t.pid for t in movers],
                     tasks=["%s[%d]" % (t.comm, t.pid) for t in movers])

    kthreads = [t for t in snapshot["tasks"] if classify(t, snapshot) == "set_affinity" and not t.allowed <= hk]
    kthreads.sort(key=lambda t: (t.pid != KTHREADD, t.pid))     # kthreadd first: new threads inherit
    if kthreads:
        for task in kthreads:
            record["kthreads"].setdefault(task.key(), format_cpulist(task.allowed))
        plan.add(KTHREAD_AFFINITY, "kernel threads", {t.key(): format_cpulist(t.allowed) for t in kthreads},
                 hk_text, pids=[t.pid for t in kthreads], keys=[t.key() for t in kthreads])

    for key, (relpath, action) in sorted(_MASK_ACTIONS.items(), reverse=True):
        before = snapshot[key]
        if before is not None and before != hk:
            if record[key] is None:
                record[key] = format_cpulist(before)
            plan.add(action, "/" + relpath, format_cpulist(before), hk_text, mask=format_cpumask(hk, max(online) + 1))

    if plan or (snapshot["state"] or {}) != record:
        # The record goes first: the originals are on disk before anything changes, so a run killed
        # part-way is released exactly (a re-run keeps the first originals it finds).
        plan.steps.insert(0, Step(RECORD, "/" + STATE_FILE, snapshot["state"], record))
    return plan


def plan_release(snapshot):
    """The steps that undo a confinement (the recorded one, else whatever hpcvirt's cgroup holds)."""
    online = snapshot["online"]
    state = snapshot["state"] or {}
    layout = snapshot["layout"]
    plan = Plan()
    alive = {t.key(): t for t in snapshot["tasks"]}

    for unit, before in sorted(state.get("systemd_units", {}).items()):
        current = snapshot["systemd_units"].get(unit)
        if current is not None and format_cpulist(current) != before:
            plan.add(SYSTEMD_ALLOWED_CPUS, unit, format_cpulist(current) or "all", before or "all")
    current = snapshot["housekeeping_cgroup"]
    if current is not None:
        if current["pids"]:
            plan.add(RELEASE_TASKS, layout.cpuset_root, "/" + HOUSEKEEPING_CGROUP, "/",
                     pids=list(current["pids"]))
        pinned = {key: cpus for key, cpus in state.get("pinned_tasks", {}).items()
                  if key in alive and format_cpulist(alive[key].allowed) != cpus}
        if pinned:
            plan.add(RESTORE_AFFINITY, "pinned tasks", None, pinned)
        plan.add(REMOVE_HOUSEKEEPING_CGROUP, current["path"], format_cpulist(current["cpus"]), None)

    kthreads = {}
    for key, before in state.get("kthreads", {}).items():
        task = alive.get(key)
        if task is not None and format_cpulist(task.allowed) != before:
            kthreads[key] = before
    if kthreads:
        plan.add(RESTORE_AFFINITY, "kernel threads",
                 {key: format_cpulist(alive[key].allowed) for key in kthreads}, kthreads)

    for key, (relpath, action) in sorted(_MASK_ACTIONS.items(), reverse=True):
        current_mask = snapshot[key]
        if current_mask is None:
            continue
        want = parse_cpulist(state[key]) if state.get(key) else (online if state or current is not None else None)
        if want is not None and current_mask != want:
            plan.add(action, "/" + relpath, format_cpulist(current_mask), format_cpulist(want),
                     mask=format_cpumask(want, max(online) + 1))
    if snapshot["state"] is not None:
        plan.add(RECORD, "/" + STATE_FILE, snapshot["state"], None)
    return plan


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def _move_pid(procs_file, pid):
    """Write one pid to a cgroup.procs file: True, or the reason it did not move."""
    try:
        _write(procs_file, "%d\n" % pid)
        return True
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return True                 # gone meanwhile: nothing left to confine
        return os.strerror(exc.errno) if exc.errno else str(exc)


def _move_pids(procs_file, pids, refused):
    """``_move_pid`` for each pid; the refusals (pid -> reason) are added to ``refused``, returned."""
    for pid in pids:
        outcome = _move_pid(procs_file, pid)
        if outcome is not True:
            refused[pid] = outcome
    return refused


def _set_affinity(root, pid, cpus):
    """sched_setaffinity on every thread of ``pid``: None, or the reason it refused."""
    task_dir = os.path.join(root, "proc", str(pid), "task")
    try:
        tids = [int(t) for t in os.listdir(task_dir) if t.isdigit()]
    except OSError:
        return None                     # gone
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:
            continue
        except OSError as exc:
            return os.strerror(exc.errno) if exc.errno else str(exc)
    return None


def _pid_of(key):
    return int(key.split(":", 1)[0])


def _outcome(refused):
    return {"refused": refused} if refused else None


def _run_systemd(ctx, step):
    value = "" if step.after == "all" else step.after
    rc, out, err = ctx.runner(["systemctl", "set-property", "--runtime", step.target, "AllowedCPUs=%s" % value])
    if rc != 0:
        raise ConfineError("systemctl set-property %s AllowedCPUs=%s failed: %s" % (step.target, value, (err or out).strip()))


def _run_housekeeping_cgroup(_ctx, step):
    cpuset_root = os.path.dirname(step.target)
    if step.detail["version"] == 2:
        if "cpuset" not in (read_text(cpuset_root, "cgroup.subtree_control", "") or "").split():
            _write(os.path.join(cpuset_root, "cgroup.subtree_control"), "+cpuset")
    os.makedirs(step.target, exist_ok=True)
    if step.detail["version"] == 1:
        _write(os.path.join(step.target, "cpuset.mems"), step.detail["mems"])
    _write(os.path.join(step.target, "cpuset.cpus"), step.after)


def _run_move_tasks(ctx, step):
    procs = os.path.join(step.target, "cgroup.procs")
    refused = _move_pids(procs, step.detail["pids"], {})
    # Tasks forked meanwhile by the ones not yet moved are born in the root: move them too.
    for _round in range(3):
        fresh = read_node(ctx.get("root", "/"))
        movers = [t.pid for t in fresh["tasks"] if classify(t, fresh) == "move" and t.pid not in refused]
        if not movers:
            break
        _move_pids(procs, movers, refused)
    return _outcome([{"pid": pid, "what": "task", "reason": why} for pid, why in sorted(refused.items())])


def _run_kthread_affinity(ctx, step):
    cpus = parse_cpulist(step.after)
    refused = []
    for pid in step.detail["pids"]:
        reason = _set_affinity(ctx.get("root", "/"), pid, cpus)
        if reason:
            refused.append({"pid": pid, "what": "kernel thread", "reason": reason})
    return _outcome(refused)


def _run_mask(ctx, step):
    try:
        _write(os.path.join(ctx.get("root", "/"), step.target.lstrip("/")), step.detail["mask"])
    except OSError as exc:
        return _outcome([{"pid": None, "what": step.target, "reason": os.strerror(exc.errno or 0)}])
    return None


def _run_record(ctx, step):
    if step.after is None:
        remove_state(ctx.get("root", "/"), STATE_FILE)
    else:
        write_json_atomic(ctx.get("root", "/"), STATE_FILE, step.after)


def _run_release_tasks(_ctx, step):
    procs = os.path.join(step.target, "cgroup.procs")
    housekeeping = os.path.join(step.target, HOUSEKEEPING_CGROUP)
    refused = {}
    for _round in range(4):
        pids = [int(p) for p in (read_text(housekeeping, "cgroup.procs", "") or "").split()]
        pids = [pid for pid in pids if pid not in refused]
        if not pids:
            break
        _move_pids(procs, pids, refused)
    return _outcome([{"pid": pid, "what": "task", "reason": why} for pid, why in sorted(refused.items())])


def _run_restore_affinity(ctx, step):
    refused = []
    for key, cpus in sorted(step.after.items()):
        reason = _set_affinity(ctx.get("root", "/"), _pid_of(key), parse_cpulist(cpus))
        if reason:
            refused.append({"pid": _pid_of(key), "what": step.target, "reason": reason})
    return _outcome(refused)


def _run_remove_cgroup(_ctx, step):
    try:
        os.rmdir(step.target)
    except FileNotFoundError:
        pass


SYSTEMD_ALLOWED_CPUS = Action("systemd_allowed_cpus", _run_systemd, phase="confine")
HOUSEKEEPING_CGROUP_CREATE = Action("housekeeping_cgroup", _run_housekeeping_cgroup, phase="confine")
MOVE_TASKS = Action("move_tasks", _run_move_tasks, phase="confine")
KTHREAD_AFFINITY = Action("kthread_affinity", _run_kthread_affinity, phase="confine")
WORKQUEUE_CPUMASK = Action("workqueue_cpumask", _run_mask, phase="confine")
IRQ_DEFAULT_AFFINITY = Action("irq_default_affinity", _run_mask, phase="confine")
RECORD = Action("record_confinement", _run_record, phase="record", live=False)
RELEASE_TASKS = Action("release_tasks", _run_release_tasks, phase="confine")
RESTORE_AFFINITY = Action("restore_affinity", _run_restore_affinity, phase="confine")
REMOVE_HOUSEKEEPING_CGROUP = Action("remove_housekeeping_cgroup", _run_remove_cgroup, phase="confine")
ACTIONS = (SYSTEMD_ALLOWED_CPUS, HOUSEKEEPING_CGROUP_CREATE, MOVE_TASKS, KTHREAD_AFFINITY, WORKQUEUE_CPUMASK,
           IRQ_DEFAULT_AFFINITY, RECORD, RELEASE_TASKS, RESTORE_AFFINITY, REMOVE_HOUSEKEEPING_CGROUP)
_MASK_ACTIONS = {"workqueue_mask": (WORKQUEUE_MASK, WORKQUEUE_CPUMASK), "irq_default": (IRQ_DEFAULT, IRQ_DEFAULT_AFFINITY)}


def refusals(plan):
    """What refused to move while ``plan`` was carried out (from each step's result)."""
    found = []
    for step in plan:
        if step.action in ACTIONS and step.result and step.result.get("refused"):
            found.extend(step.result["refused"])
    return found


def apply_plan(plan, snapshot, runner=None, timings=None):
    """Carry a confine or release plan out through the one executor; what refused (never fatal
    for a task). ``runner(argv) -> (rc, out, err)`` is needed for systemd steps only."""
    execute(plan, Context(root=snapshot["root"], runner=runner), False, timings)
    return refusals(plan)


def read_back(snapshot, housekeeping):
    """What holds after a confinement, from every task's allowed CPUs.

    ``escaped`` are host tasks that may still run outside housekeeping (their threads' allowed
    CPUs), ``cannot_move`` the per-CPU kernel threads outside it, ``left`` the tasks in cgroups
    confinement does not touch other than the guests'. ``held`` is true when nothing escaped and
    both masks (where the kernel has them) equal housekeeping.
    """
    hk = parse_cpulist(housekeeping)
    escaped, cannot_move, left = [], [], []
    guests = 0
    for task in snapshot["tasks"]:
        kind = classify(task, snapshot)
        outside = task.allowed - hk
        if kind == "guest":
            guests += 1
            continue
        if not outside:
            continue
        entry = dict(task.to_dict(), outside=format_cpulist(outside))
        if kind == "per_cpu_kthread":
            cannot_move.append(entry)
        elif kind == "other_cgroup":
            left.append(entry)
        else:
            escaped.append(entry)
    masks = {}
    for key in ("workqueue_mask", "irq_default"):
        if snapshot[key] is not None:
            masks[key] = format_cpulist(snapshot[key])
    held = not escaped and all(parse_cpulist(v) == hk for v in masks.values())
    if snapshot["layout"].systemd:
        held = held and all(cpus == hk for cpus in snapshot["systemd_units"].values())
    return {"held": held, "escaped": escaped, "cannot_move": cannot_move, "left": left,
            "guest_tasks_untouched": guests, "masks": masks}


def status(snapshot):
    """``confined`` (to which CPUs) or not, from the record and the kernel's files."""
    state = snapshot["state"]
    cgroup = snapshot["housekeeping_cgroup"]
    return {"confined": bool(state or cgroup),
            "housekeeping": (state or {}).get("housekeeping") or (format_cpulist(cgroup["cpus"]) if cgroup else None)}
