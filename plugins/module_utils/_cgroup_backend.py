# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The write side of the cpuset controller, for cgroup v1 and v2 (the read side is ``_cgroup``).

Which files make a partition, in which order, and when the kernel will accept exclusivity:

* v1: ``cpuset.cpu_exclusive`` is accepted only when the parent is ``cpu_exclusive`` too and no
  sibling's ``cpuset.cpus`` overlaps (else EACCES / EINVAL); ``mem_exclusive`` likewise for mems;
  ``sched_load_balance=0`` isolates only when every ancestor also has it at 0.
* v2: ``cpuset.cpus.partition`` = ``root`` / ``isolated`` is valid only below a valid partition root
  and with CPUs no sibling holds; otherwise the kernel accepts the write and reads back
  ``root invalid (reason)``. ``write_file`` reads a partition write back and, when the kernel does
  not hold it, sets the cgroup back to ``member`` and fails naming the file and the reason.
* v2 under systemd: systemd owns ``machine.slice``; ``systemctl daemon-reload`` rewrites its
  ``cpuset.cpus`` from the slice's ``AllowedCPUs``, so hpcvirt never writes the machine cgroup there
  and only checks that it allows every CPU the layout needs (``v2_machine_problem``). Partition
  cgroups below it are hpcvirt's own directories, which systemd leaves alone.

libvirt copies the machine cgroup's cpus into every guest cgroup it creates (v1) and guests start
with every CPU allowed, so a partition beside running guests usually cannot be made exclusive by
the kernel. ``exclusive_writes`` then writes nothing and says why; hpcvirt's own admission control
(no overlap between partitions, pool and housekeeping; the placement module's pins) is what keeps
the partition exclusive.
"""

from __future__ import annotations

import errno
import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

V1_FLAGS = ("cpuset.cpu_exclusive", "cpuset.mem_exclusive", "cpuset.sched_load_balance")
V1_DEFAULTS = {"cpuset.cpu_exclusive": "0", "cpuset.mem_exclusive": "0", "cpuset.sched_load_balance": "1"}
V2_PARTITION = "cpuset.cpus.partition"
V2_EXCLUSIVE = "cpuset.cpus.exclusive"


class BackendError(Exception):
    pass


def read_flags(cgroup):
    if cgroup.version == 1:
        return {key: cgroup.read(key, V1_DEFAULTS[key]) for key in V1_FLAGS}
    flags = {V2_PARTITION: cgroup.read(V2_PARTITION, "member")}
    if os.path.exists(cgroup.file(V2_EXCLUSIVE)):
        flags[V2_EXCLUSIVE] = cgroup.read(V2_EXCLUSIVE, "")
    return flags


def read_partition(cgroup):
    return {"path": cgroup.path, "cpus": cgroup.cpus, "mems": cgroup.mems, "flags": read_flags(cgroup),
            "state": cgroup.partition_state, "tasks": bool(cgroup.pids())}


def _parent(cgroup_path):
    return os.path.dirname(cgroup_path.rstrip("/"))


def parent_cpus(cgroup):
    return parse_cpulist(read_text(_parent(cgroup.path), "cpuset.cpus" if cgroup.version == 1
                                   else "cpuset.cpus.effective", ""))


def parent_mems(cgroup):
    return parse_cpulist(read_text(_parent(cgroup.path), "cpuset.mems" if cgroup.version == 1
                                   else "cpuset.mems.effective", ""))


def new_cgroup_files(version, cpus, mems):
    """Files a new cpuset cgroup needs, in order. v1 starts empty and needs mems before tasks."""
    return [("cpuset.mems", format_cpulist(mems)), ("cpuset.cpus", format_cpulist(cpus))]


def resize_writes(version, part, cpus, mems):
    """Writes that move an existing partition cgroup to ``cpus``/``mems``."""
    writes = []
    mems_write = ("cpuset.mems", format_cpulist(part["mems"]), format_cpulist(mems))
    cpus_write = ("cpuset.cpus", format_cpulist(part["cpus"]), format_cpulist(cpus))
    if mems != part["mems"] and mems >= part["mems"]:
        writes.append(mems_write)
    if cpus != part["cpus"]:
        writes.append(cpus_write)
    if mems != part["mems"] and not mems >= part["mems"]:
        writes.append(mems_write)
    return writes


def clear_exclusive_writes(version, part):
    """Writes that turn a partition cgroup back into a plain member (before resizing or removing)."""
    flags = part["flags"]
    if version == 1:
        return [(key, flags[key], V1_DEFAULTS[key]) for key in V1_FLAGS if flags.get(key, V1_DEFAULTS[key]) != V1_DEFAULTS[key]]
    writes = []
    if flags.get(V2_PARTITION, "member") != "member":
        writes.append((V2_PARTITION, flags[V2_PARTITION], "member"))
    if flags.get(V2_EXCLUSIVE):
        writes.append((V2_EXCLUSIVE, flags[V2_EXCLUSIVE], ""))
    return writes


def v2_machine_problem(current, need_cpus):
    """v2: why the machine cgroup (systemd's, not written by hpcvirt) cannot hold ``need_cpus``."""
    machine = current["machine"]
    effective = parse_cpulist(read_text(machine["path"], "cpuset.cpus.effective", "")) if machine["exists"] else frozenset()
    missing = need_cpus - effective
    if not missing:
        return None
    return ("%s reads '%s' but the layout needs CPUs %s there (housekeeping for emulator threads, the pool "
            "and every partition); allow them through systemd, e.g. systemctl set-property --runtime "
            "%s AllowedCPUs=%s" % (os.path.join(machine["path"], "cpuset.cpus.effective"), format_cpulist(effective),
                                   format_cpulist(missing), os.path.basename(machine["path"]),
                                   format_cpulist(need_cpus | effective)))


def _overlapping_guests(current, cpus):
    return sorted(name for name, guest in current["guest_cgroups"].items() if guest & cpus)


def exclusive_writes(version, current, name, want, part, desired):
    """Writes that grant (or withdraw) kernel exclusivity for one partition, and a report of it.

    The report says what was asked, what the kernel will hold, and every reason it cannot.
    """
    # Flags as they will be once earlier steps ran: a changed partition lost its flags, a new one has none.
    if part is None or part["cpus"] != want["cpus"] or part["mems"] != want["mems"]:
        flags = {} if version == 2 else dict(V1_DEFAULTS)
    else:
        flags = dict(part["flags"])
    report = {"requested": want["exclusive"], "isolate": want["isolate"], "enforced": False, "blockers": [], "notes": []}
    if not want["exclusive"]:
        base = {"path": "", "flags": flags}
        return clear_exclusive_writes(version, base), report

    guests = _overlapping_guests(current, want["cpus"])
    if guests:
        report["blockers"].append(
            "guest cgroups %s below %s hold CPUs of this partition (libvirt gives every guest cgroup "
            "the machine cgroup's CPUs); the kernel refuses exclusivity while a sibling overlaps. "
            "Exclusivity is kept by admission control until those guests are repinned to the pool"
            % (", ".join(guests), current["machine"]["path"]))
    if version == 1:
        return _v1_exclusive(current, want, flags, report)
    return _v2_exclusive(current, want, flags, report)


def _v1_exclusive(current, want, flags, report):
    if current["machine"]["flags"].get("cpuset.cpu_exclusive", "0") != "1":
        report["blockers"].append(
            "parent %s has cpuset.cpu_exclusive=0 and v1 lets only children of an exclusive cpuset be "
            "exclusive; hpcvirt does not make libvirt's machine cgroup exclusive because libvirt could "
            "then no longer create guest cgroups with the machine's CPUs" % current["machine"]["path"])
    writes = []
    if not report["blockers"]:
        report["enforced"] = True
        if flags.get("cpuset.cpu_exclusive") != "1":
            writes.append(("cpuset.cpu_exclusive", flags.get("cpuset.cpu_exclusive", "0"), "1"))
        shares_mems = [n for n, g in current["partitions"].items() if n != want["name"] and g["mems"] & want["mems"]]
        if shares_mems or current["machine"]["flags"].get("cpuset.mem_exclusive", "0") != "1":
            report["notes"].append("cpuset.mem_exclusive not set: memory nodes are shared with siblings or "
                                   "the parent is not mem_exclusive")
        elif flags.get("cpuset.mem_exclusive") != "1":
            writes.append(("cpuset.mem_exclusive", flags.get("cpuset.mem_exclusive", "0"), "1"))
    balance = "0" if want["isolate"] else "1"
    if flags.get("cpuset.sched_load_balance", "1") != balance:
        writes.append(("cpuset.sched_load_balance", flags.get("cpuset.sched_load_balance", "1"), balance))
    if want["isolate"]:
        report["notes"].append("cpuset.sched_load_balance=0 isolates the CPUs from load balancing only "
                               "when every ancestor cpuset also has sched_load_balance=0")
    return writes, report


def _v2_exclusive(current, want, flags, report):
    parent_state = read_text(current["machine"]["path"], V2_PARTITION)
    if parent_state is not None and parent_state not in ("root", "isolated"):
        report["blockers"].append(
            "parent %s is a '%s', not a valid partition root, and v2 allows a partition only below one "
            "(the kernel would read back 'root invalid (Parent is not a partition root)'). hpcvirt does "
            "not make the machine cgroup a partition root: the emulator threads of every guest live below "
            "it, on housekeeping CPUs, and a partition root cannot share CPUs with the host's other "
            "cgroups; a guest pinned into a partition elsewhere would lose those CPUs (docs/partition.md)"
            % (current["machine"]["path"], parent_state))
    if report["blockers"]:
        return [], report
    report["enforced"] = True
    writes = []
    mode = "isolated" if want["isolate"] else "root"
    if V2_EXCLUSIVE in flags or os.path.exists(os.path.join(current["machine"]["path"], V2_EXCLUSIVE)):
        value = format_cpulist(want["cpus"])
        if flags.get(V2_EXCLUSIVE, "") != value:
            writes.append((V2_EXCLUSIVE, flags.get(V2_EXCLUSIVE, ""), value))
    if flags.get(V2_PARTITION, "member") != mode:
        writes.append((V2_PARTITION, flags.get(V2_PARTITION, "member"), mode))
    return writes, report


# ---------------------------------------------------------------------------------------------
# Applying


def _why(exc, path):
    reasons = {
        errno.EINVAL: "the kernel refused it (an exclusive sibling overlaps, or the value is invalid)",
        errno.EACCES: "the kernel refused it (not a subset of the parent, or the parent is not exclusive)",
        errno.EBUSY: "a child cgroup or a task still uses what would be taken away",
        errno.ENOSPC: "the cgroup would be left without CPUs or memory nodes while it has tasks",
    }
    return "%s: %s (%s)" % (path, reasons.get(exc.errno, exc.strerror), os.strerror(exc.errno))


def _write_raw(path, value):
    try:
        with open(path, "w") as handle:
            handle.write(value if value != "" else "\n")
    except OSError as exc:
        raise BackendError(_why(exc, path))


def write_file(path, value):
    _write_raw(path, value)
    if os.path.basename(path) == V2_PARTITION and value in ("root", "isolated"):
        # v2 accepts the write and says only on reading back whether it holds the partition.
        state = read_text(os.path.dirname(path), V2_PARTITION, "")
        if "invalid" in state:
            try:
                _write_raw(path, "member")
            except BackendError:
                pass
            raise BackendError("%s: the kernel read back '%s' and does not hold the partition; "
                               "set it back to 'member'" % (path, state))


def create(path):
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise BackendError(_why(exc, path))


def remove(path):
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BackendError(_why(exc, path))


def read_back_state(path):
    """A partition's state after applying: v2 reports ``root invalid (reason)`` here."""
    state = read_text(path, V2_PARTITION)
    if state is not None:
        return state
    if read_text(path, "cpuset.cpu_exclusive", "0") == "1":
        return "root" if read_text(path, "cpuset.sched_load_balance", "1") == "1" else "isolated"
    return "member"
