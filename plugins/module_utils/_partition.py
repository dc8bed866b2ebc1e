# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The desired partition layout of a node, CPU picking, and the plan from the current state.

Pure logic: ``resolve`` turns the operator's spec into a layout with every CPU decided (refusing bad
input with a ``LayoutError`` that names the field), ``observe`` reads what the node has, and
``build_plan`` returns the ordered ``_plan.Plan`` of file writes and hugepage changes that moves the
node from one to the other in an order the kernel accepts at every step.
"""

from __future__ import annotations

import os
import re

from ansible_collections.hpcvirt.regime.plugins.module_utils import _cgroup_backend as backend
from ansible_collections.hpcvirt.regime.plugins.module_utils import _hugepages, _irq
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import partition_cgroup_name
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    CpuListError,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Plan
from ansible_collections.hpcvirt.regime.plugins.module_utils import _state
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import parse_size_kb

LAYOUT_VERSION = 1
KERNEL_ARGS = ("isolcpus", "nohz_full", "rcu_nocbs")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


def layout_argument_spec():
    """The module options that describe a layout (partition and node_regime share them)."""
    return dict(
        housekeeping=dict(type="str"),
        partitions=dict(type="list", elements="dict", default=[], options=dict(
            name=dict(type="str", required=True),
            cpus=dict(type="str"),
            count=dict(type="int"),
            numa_nodes=dict(type="list", elements="int"),
            hugepages=dict(type="dict", options=dict(
                size=dict(type="str", default="2M"),
                count=dict(type="int", required=True),
            )),
            exclusive=dict(type="bool", default=True),
            isolate=dict(type="bool", default=False),
        )),
        pool=dict(type="str", default="auto"),
        irq_steering=dict(type="bool", default=False),
        kernel_args=dict(type="list", elements="str", default=[], choices=list(KERNEL_ARGS)),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )


class LayoutError(HpcvirtError, ValueError):
    """Bad input: the message starts with the field it is about."""


# ---------------------------------------------------------------------------------------------
# Desired layout


def _cpus(field, value, topology):
    try:
        cpus = parse_cpulist(value)
    except CpuListError as exc:
        raise LayoutError("%s: %s" % (field, exc))
    offline = cpus - topology.online
    if offline:
        raise LayoutError("%s: CPUs %s are not online (online: %s)"
                          % (field, format_cpulist(offline), format_cpulist(topology.online)))
    return cpus


def _hugepages_spec(field, spec):
    if not spec:
        return None
    size = spec.get("size", "2M")
    try:
        size_kb = parse_size_kb(str(size))
    except ValueError:
        raise LayoutError("%s.size: '%s' is not a page size (e.g. 2M, 1G)" % (field, size))
    count = spec.get("count", 0)
    if not isinstance(count, int) or count < 0:
        raise LayoutError("%s.count: must be a whole number >= 0, got %r" % (field, count))
    return {"size_kb": size_kb, "count": count} if count else None


def _cores_within(topology, cpus):
    """Whole cores (tuples of online siblings) entirely inside ``cpus``, in CPU order."""
    return [core for core in topology.cores() if set(core) <= cpus]


def pick_cpus(topology, count, free, numa_nodes=None):
    """``count`` CPUs out of ``free`` as whole cores, on one NUMA node where possible.

    Deterministic: the node that fits with the fewest free CPUs left over (best fit keeps big nodes
    whole for big partitions), lowest node id on ties, lowest cores first. Returns None when the free
    whole cores cannot make exactly ``count`` CPUs.
    """
    nodes = sorted(numa_nodes) if numa_nodes else sorted(topology.nodes)

    def take(cores):
        chosen, total = [], 0
        for core in cores:
            if total + len(core) <= count:
                chosen.extend(core)
                total += len(core)
            if total == count:
                return frozenset(chosen)
        return None

    fits = []
    for node in nodes:
        node_free = free & topology.nodes[node].cpus if node in topology.nodes else frozenset()
        picked = take(_cores_within(topology, node_free))
        if picked is not None:
            fits.append((len(node_free) - count, node, picked))
    if fits:
        return sorted(fits, key=lambda fit: (fit[0], fit[1]))[0][2]
    if numa_nodes and len(numa_nodes) == 1:
        return None
    span = frozenset().union(*(topology.nodes[n].cpus for n in nodes if n in topology.nodes))
    return take(_cores_within(topology, free & span))


def resolve(spec, topology, current_partitions=None):
    """The layout ``spec`` asks for, every CPU decided, validated against ``topology``.

    ``spec``: housekeeping, partitions (name, cpus | count, numa_nodes, hugepages, exclusive,
    isolate), pool (cpu-list or ``auto``), irq_steering, kernel_args. ``current_partitions``
    (name -> cpus) lets a ``count`` partition keep the CPUs it has when they still satisfy it.
    """
    current_partitions = current_partitions or {}
    housekeeping = _cpus("housekeeping", spec.get("housekeeping"), topology)
    if not housekeeping:
        raise LayoutError("housekeeping: must name at least one online CPU for the host, "
                          "libvirtd, emulator threads and IRQs")
    pool_text = spec.get("pool") or "auto"
    explicit_pool = None if pool_text == "auto" else _cpus("pool", pool_text, topology)

    entries = spec.get("partitions") or []
    names = set()
    for index, entry in enumerate(entries):
        field = "partitions[%d]" % index
        name = entry.get("name")
        if not name or not _NAME.match(str(name)):
            raise LayoutError("%s.name: %r is not a partition name (letters, digits, '-', '_'; "
                              "at most 63 characters)" % (field, name))
        if name in names:
            raise LayoutError("%s.name: partition '%s' is given twice" % (field, name))
        names.add(name)
        if (entry.get("cpus") is None) == (entry.get("count") is None):
            raise LayoutError("%s (%s): give exactly one of cpus or count" % (field, name))

    taken = {}   # cpu -> owner, to name who overlaps

    def claim(field, owner, cpus):
        for cpu in sorted(cpus):
            if cpu in taken:
                raise LayoutError("%s: CPU %d of %s is already in %s; partitions, housekeeping and "
                                  "the pool must not overlap" % (field, cpu, owner, taken[cpu]))
        for cpu in cpus:
            taken[cpu] = owner

    claim("housekeeping", "housekeeping", housekeeping)
    resolved = {}
    # Explicit CPUs first, then count partitions that keep their CPUs, then new picks in order.
    order = sorted(range(len(entries)), key=lambda i: 0 if entries[i].get("cpus") is not None else 1)
    pending = []
    for index in order:
        entry = entries[index]
        field = "partitions[%d]" % index
        numa = _numa_nodes(field, entry, topology)
        if entry.get("cpus") is not None:
            cpus = _cpus(field + ".cpus", entry["cpus"], topology)
            if not cpus:
                raise LayoutError("%s.cpus: partition '%s' has no CPUs" % (field, entry["name"]))
            _check_numa(field, entry["name"], cpus, numa, topology)
            claim(field + ".cpus", "partition '%s'" % entry["name"], cpus)
            resolved[index] = cpus
        else:
            pending.append((index, field, numa))

    still = []
    for index, field, numa in pending:
        entry = entries[index]
        count = entry["count"]
        if not isinstance(count, int) or count < 1:
            raise LayoutError("%s.count: must be a whole number >= 1, got %r" % (field, count))
        have = current_partitions.get(entry["name"], frozenset())
        if (len(have) == count and have <= topology.online and not (have & set(taken))
                and (not numa or topology.nodes_of(have) <= set(numa))
                and (explicit_pool is None or not have & explicit_pool)):
            claim(field, "partition '%s'" % entry["name"], have)
            resolved[index] = have
        else:
            still.append((index, field, numa))
    for index, field, numa in still:
        entry = entries[index]
        free = topology.online - set(taken) - (explicit_pool or frozenset())
        cpus = pick_cpus(topology, entry["count"], free, numa)
        if cpus is None:
            threads = max((len(c) for c in topology.cores()), default=1)
            raise LayoutError(
                "%s.count: cannot find %d CPUs as whole cores (%d thread(s) per core)%s among the "
                "free CPUs %s" % (field, entry["count"], threads,
                                  " on NUMA node(s) %s" % ",".join(map(str, numa)) if numa else "",
                                  format_cpulist(free) or "(none)"))
        claim(field, "partition '%s'" % entry["name"], cpus)
        resolved[index] = cpus

    partitions = []
    in_partitions = frozenset()
    for index, entry in enumerate(entries):
        field = "partitions[%d]" % index
        cpus = resolved[index]
        in_partitions |= cpus
        numa = _numa_nodes(field, entry, topology)
        partitions.append({
            "name": entry["name"],
            "cpus": cpus,
            "mems": frozenset(numa) if numa else topology.nodes_of(cpus),
            "hugepages": _hugepages_spec(field + ".hugepages", entry.get("hugepages")),
            "exclusive": bool(entry.get("exclusive", True)),
            "isolate": bool(entry.get("isolate", False)),
        })

    if explicit_pool is not None:
        clash = explicit_pool & in_partitions
        if clash:
            raise LayoutError("pool: CPUs %s are in partitions; the pool must not overlap a partition"
                              % format_cpulist(clash))
        pool = explicit_pool
    else:
        # Every CPU left; when nothing is left, time-shared guests share the housekeeping CPUs.
        pool = (topology.online - housekeeping - in_partitions) or housekeeping
    kernel_args = list(spec.get("kernel_args") or [])
    for arg in kernel_args:
        if arg not in KERNEL_ARGS:
            raise LayoutError("kernel_args: '%s' is not one of %s" % (arg, ", ".join(KERNEL_ARGS)))
    return {
        "housekeeping": housekeeping,
        "pool": pool,
        "partitions": partitions,
        "irq_steering": bool(spec.get("irq_steering", False)),
        "kernel_args": kernel_args,
    }


def _numa_nodes(field, entry, topology):
    numa = entry.get("numa_nodes")
    if numa is None:
        return None
    if isinstance(numa, (int, str)):
        numa = parse_cpulist(numa)
    numa = sorted(set(numa))
    unknown = [n for n in numa if n not in topology.nodes]
    if unknown:
        raise LayoutError("%s.numa_nodes: NUMA node(s) %s do not exist (nodes: %s)"
                          % (field, ",".join(map(str, unknown)), ",".join(map(str, sorted(topology.nodes)))))
    return numa


def _check_numa(field, name, cpus, numa, topology):
    if numa is None:
        return
    outside = topology.nodes_of(cpus) - set(numa)
    if outside:
        raise LayoutError("%s.cpus: partition '%s' spans NUMA node(s) %s but numa_nodes says %s"
                          % (field, name, ",".join(map(str, sorted(outside))), ",".join(map(str, numa))))


def layout_to_record(layout):
    """The JSON form kept in the layout file (cpu-lists as strings, as _node.observe_layout reads)."""
    return {
        "version": LAYOUT_VERSION,
        "housekeeping": format_cpulist(layout["housekeeping"]),
        "pool": format_cpulist(layout["pool"]),
        "partitions": [{
            "name": p["name"], "cpus": format_cpulist(p["cpus"]), "mems": format_cpulist(p["mems"]),
            "hugepages": p["hugepages"], "exclusive": p["exclusive"], "isolate": p["isolate"],
        } for p in layout["partitions"]],
        "irq_steering": layout["irq_steering"],
        "kernel_args": list(layout["kernel_args"]),
    }


def record_to_spec(record):
    """A layout file's record as a spec ``resolve`` accepts (the boot-time re-apply uses it)."""
    return {
        "housekeeping": record["housekeeping"],
        "pool": "auto" if record.get("pool_auto") else (record.get("pool") or "auto"),
        "partitions": [{"name": p["name"], "cpus": p["cpus"], "numa_nodes": p.get("mems") or None,
                        "hugepages": ({"size": "%dk" % p["hugepages"]["size_kb"], "count": p["hugepages"]["count"]}
                                      if p.get("hugepages") else None),
                        "exclusive": p.get("exclusive", True), "isolate": p.get("isolate", False)}
                       for p in record.get("partitions", [])],
        "irq_steering": record.get("irq_steering", False),
        "kernel_args": record.get("kernel_args", []),
    }


# ---------------------------------------------------------------------------------------------
# Kernel command line


def kernel_args_needed(layout, cmdline):
    """The boot arguments the layout asks for that the running kernel does not have.

    Never edits a boot loader: returns ``(reboot_required, args)`` with the exact arguments.
    """
    isolated = frozenset()
    for part in layout["partitions"]:
        if part["exclusive"]:
            isolated |= part["cpus"]
    if not isolated or not layout["kernel_args"]:
        return False, []
    running = {"isolcpus": cmdline.isolcpus, "nohz_full": cmdline.nohz_full, "rcu_nocbs": cmdline.rcu_nocbs}
    args = []
    for name in layout["kernel_args"]:
        if running[name] != isolated:
            value = format_cpulist(isolated)
            if name == "isolcpus":
                value = "managed_irq,domain," + value
            args.append("%s=%s" % (name, value))
    return bool(args), args


# ---------------------------------------------------------------------------------------------
# Current state


def observe(node, guest_pins=None):
    """What the plan starts from: cgroups below the machine cgroup, hugepages, IRQs, the layout file.

    Reads only (``node`` is the run's ``_node.NodeState``). Which IRQs refuse a new affinity is
    what earlier runs learned on this boot (``_irq.known_unmovable``); an IRQ never tried is
    planned, and a refusal is reported by the step and remembered for the next run.
    """
    cgroups = node.cgroups
    irq_root = os.path.join(node.root, "proc/irq")
    irqs = node.irqs()
    machine = cgroups.machine
    partitions = {}
    for name, cgroup in sorted(cgroups.partitions().items()):
        partitions[name] = backend.read_partition(cgroup)
    guests = {c.name: c.cpus for c in cgroups.guest_cgroups()}
    return {
        "version": cgroups.cpuset_version,
        "machine": {"path": machine.path, "exists": machine.exists(),
                    "cpus": machine.cpus if machine.exists() else frozenset(),
                    "mems": machine.mems if machine.exists() else frozenset(),
                    "flags": backend.read_flags(machine) if machine.exists() else {}},
        "machine_parent_cpus": backend.parent_cpus(machine),
        "machine_parent_mems": backend.parent_mems(machine),
        "partitions": partitions,
        "guest_cgroups": guests,
        "hugepages": node.hugepages(),
        "irqs": irqs,
        "irq_unmovable": sorted(_irq.known_unmovable(node.root) & set(irqs), key=_irq.sort_key),
        "per_cpu_irqs": _irq.per_cpu_interrupts(node.root),
        "root": node.root,
        "irq_root": irq_root,
        "record": node.record,
        "guest_pins": guest_pins or {},
    }


# ---------------------------------------------------------------------------------------------
# Guards that need the current state


def check_running_guests(layout, current, removing):
    """Refuse to take CPUs away from a partition a running guest is pinned into."""
    wanted = {p["name"]: p["cpus"] for p in (layout["partitions"] if layout else [])}
    for name, part in sorted(current["partitions"].items()):
        have = part["cpus"]
        keep = frozenset() if name in removing else wanted.get(name, frozenset())
        if have <= keep:
            continue
        for guest, pins in sorted(current["guest_pins"].items()):
            used = frozenset().union(*pins) if pins else frozenset()
            if used and used <= have and not used <= keep:
                raise LayoutError(
                    "partitions: partition '%s' would lose CPUs %s that running guest '%s' is pinned to "
                    "(%s); move the guest first with the placement module (hpcvirt.regime.placement), "
                    "then change the partition"
                    % (name, format_cpulist(have - keep), guest, format_cpulist(used)))


def check_hugepages(targets, current, topology):
    """Refuse hugepage increases beyond a NUMA node's free memory."""
    for (node, size_kb), target in sorted(targets.items()):
        have = current["hugepages"].get(node, {}).get(size_kb, 0)
        extra_kb = (target - have) * size_kb
        free_kb = topology.nodes[node].mem_free_kb if node in topology.nodes else 0
        if extra_kb > 0 and extra_kb > free_kb:
            raise LayoutError(
                "partitions: hugepages: NUMA node %d needs %d more %d kB pages (%d MiB) but has only "
                "%d MiB free" % (node, target - have, size_kb, extra_kb // 1024, free_kb // 1024))


def prepare(spec, node, guest_pins):
    """Resolve ``spec`` (None: no partitions at all) against ``node`` and run every guard.

    Returns ``(layout, current)``; raises ``LayoutError`` before anything is changed.
    """
    topology = node.topology
    have = {name: cgroup.cpus for name, cgroup in node.cgroups.partitions().items()}
    layout = resolve(spec, topology, have) if spec is not None else None
    current = observe(node, guest_pins=guest_pins)
    removing = set(current["partitions"]) - {p["name"] for p in (layout["partitions"] if layout else [])}
    check_running_guests(layout, current, removing)
    for name in sorted(removing):
        if current["partitions"][name]["tasks"]:
            raise LayoutError("partitions: partition '%s' still has tasks in %s; move its guests out with "
                              "the placement module first" % (name, current["partitions"][name]["path"]))
    check_hugepages(hugepage_targets(layout, current), current, topology)
    return layout, current


# ---------------------------------------------------------------------------------------------
# Plan


def hugepage_targets(layout, current):
    """Per (NUMA node, page size): pages not ours (baseline) plus what the new layout asks for.

    Ours is what the recorded layout asked for, so other users' hugepages are never taken away and a
    fresh boot (no pages) re-reserves ours.
    """
    def ours(partitions):
        total = {}
        for part in partitions:
            pages = part.get("hugepages")
            if not pages:
                continue
            for node in sorted(parse_cpulist(part["mems"]) if isinstance(part["mems"], str) else part["mems"]):
                key = (node, pages["size_kb"])
                total[key] = total.get(key, 0) + pages["count"]
        return total

    before = ours((current["record"] or {}).get("partitions", []))
    after = ours(layout["partitions"] if layout else [])
    targets = {}
    for key in sorted(set(before) | set(after)):
        have = current["hugepages"].get(key[0], {}).get(key[1], 0)
        baseline = max(0, have - before.get(key, 0))
        target = baseline + after.get(key, 0)
        if target != have:
            targets[key] = target
    return targets


def build_plan(layout, current, layout_path, record_extra=None):
    """Steps from ``current`` to ``layout`` (None: remove every partition), valid at every step.

    Order: hugepages (so a shortfall is refused before anything else moved), widen the machine
    cgroup, drop exclusivity of partitions that change or go, remove partitions, create and resize
    partitions, grant exclusivity, narrow the machine cgroup, steer IRQs, record the layout file.
    """
    plan = Plan()
    version = current["version"]
    machine = current["machine"]
    desired = {p["name"]: p for p in (layout["partitions"] if layout else [])}
    record = current["record"] or {}
    restore = dict(record.get("restore") or {})
    if "machine" not in restore:
        # What the machine cgroup was before hpcvirt first touched it (None: hpcvirt created it).
        restore["machine"] = ({"cpus": format_cpulist(machine["cpus"]), "mems": format_cpulist(machine["mems"])}
                              if machine["exists"] else None)

    for (node, size_kb), target in sorted(hugepage_targets(layout, current).items()):
        plan.add(HUGEPAGES, _hugepages.node_path(node, size_kb, current["root"]),
                 current["hugepages"].get(node, {}).get(size_kb, 0), target, node=node, size_kb=size_kb)

    # Machine cgroup: pool and every partition (a guest pinned into a partition must be allowed by
    # its parent), never narrower than what guest cgroups below it use (v1 refuses that). Memory
    # nodes only ever widen: pool guests may use any node.
    if layout:
        need_cpus = layout["pool"] | frozenset().union(*(p["cpus"] for p in desired.values()))
    else:
        need_cpus = parse_cpulist((restore.get("machine") or {}).get("cpus", "")) or current["machine_parent_cpus"]
    part_mems = frozenset().union(*(p["mems"] for p in desired.values())) if desired else frozenset()
    held_cpus = frozenset().union(*current["guest_cgroups"].values()) if current["guest_cgroups"] else frozenset()
    final_cpus = need_cpus | held_cpus
    final_mems = machine["mems"] | part_mems if machine["exists"] else (part_mems | current["machine_parent_mems"])
    wide_cpus = machine["cpus"] | final_cpus
    if not machine["exists"]:
        plan.add(CGROUP_CREATE, machine["path"], None, "present")
        for key, value in backend.new_cgroup_files(version, final_cpus, final_mems):
            plan.add(CGROUP_WRITE, os.path.join(machine["path"], key), None, value)
    else:
        if final_mems != machine["mems"]:
            plan.add(CGROUP_WRITE, os.path.join(machine["path"], "cpuset.mems"),
                     format_cpulist(machine["mems"]), format_cpulist(final_mems))
        if wide_cpus != machine["cpus"]:
            plan.add(CGROUP_WRITE, os.path.join(machine["path"], "cpuset.cpus"),
                     format_cpulist(machine["cpus"]), format_cpulist(wide_cpus))

    # Partitions that change CPUs or go away lose kernel exclusivity first, so that no step meets an
    # exclusive sibling.
    existing = current["partitions"]
    for name, part in sorted(existing.items()):
        want = desired.get(name)
        if want is None or want["cpus"] != part["cpus"] or want["mems"] != part["mems"]:
            for key, before, after in backend.clear_exclusive_writes(version, part):
                plan.add(CGROUP_WRITE, os.path.join(part["path"], key), before, after)
    for name, part in sorted(existing.items()):
        if name not in desired:
            plan.add(CGROUP_REMOVE, part["path"], "present", None, partition=name)

    for name in [p["name"] for p in (layout["partitions"] if layout else [])]:
        want = desired[name]
        path = os.path.join(machine["path"], partition_cgroup_name(name))
        part = existing.get(name)
        if part is None:
            plan.add(CGROUP_CREATE, path, None, "present", partition=name)
            for key, value in backend.new_cgroup_files(version, want["cpus"], want["mems"]):
                plan.add(CGROUP_WRITE, os.path.join(path, key), None, value, partition=name)
        else:
            # mems before cpus when growing, after when shrinking: either way each write is valid.
            for key, before, after in backend.resize_writes(version, part, want["cpus"], want["mems"]):
                plan.add(CGROUP_WRITE, os.path.join(path, key), before, after, partition=name)

    exclusivity = {}
    for name in [p["name"] for p in (layout["partitions"] if layout else [])]:
        want = desired[name]
        part = existing.get(name)
        path = os.path.join(machine["path"], partition_cgroup_name(name))
        writes, report = backend.exclusive_writes(version, current, name, want, part, desired)
        exclusivity[name] = report
        for key, before, after in writes:
            plan.add(CGROUP_WRITE, os.path.join(path, key), before, after, partition=name)

    if machine["exists"] and final_cpus != wide_cpus:
        plan.add(CGROUP_WRITE, os.path.join(machine["path"], "cpuset.cpus"),
                 format_cpulist(wide_cpus), format_cpulist(final_cpus))

    if (layout is None and "machine" in (record.get("restore") or {}) and record["restore"]["machine"] is None
            and machine["exists"] and not current["guest_cgroups"]):
        plan.add(CGROUP_REMOVE, machine["path"], "present", None)

    irq_report = {"steered": [], "unmovable": [], "per_cpu": list(current.get("per_cpu_irqs", []))}
    irq_restore = dict(restore.get("irq_affinity") or {})
    if layout and layout["irq_steering"]:
        isolated = frozenset().union(*(p["cpus"] for p in desired.values())) if desired else frozenset()
        for irq, cpus in sorted(current["irqs"].items(), key=lambda kv: _irq.sort_key(kv[0])):
            if not cpus & isolated or cpus <= layout["housekeeping"]:
                continue
            if irq in current.get("irq_unmovable", ()):
                irq_report["unmovable"].append(irq)
            else:
                plan.add(IRQ_AFFINITY, _irq.affinity_path(irq, current["irq_root"]), format_cpulist(cpus),
                         format_cpulist(layout["housekeeping"]), irq=irq)
                irq_restore.setdefault(irq, format_cpulist(cpus))
                irq_report["steered"].append(irq)
    else:
        for irq, original in sorted(irq_restore.items(), key=lambda kv: _irq.sort_key(kv[0])):
            cpus = current["irqs"].get(irq)
            if cpus is not None and format_cpulist(cpus) != original:
                plan.add(IRQ_AFFINITY, _irq.affinity_path(irq, current["irq_root"]), format_cpulist(cpus), original, irq=irq)
        irq_restore = {}

    if layout:
        new_record = layout_to_record(layout)
        new_record["restore"] = {"machine": restore.get("machine"), "irq_affinity": irq_restore}
        new_record["machine_cgroup"] = machine["path"]
        new_record.update(record_extra or {})
        if new_record != record:
            plan.add(LAYOUT_FILE, layout_path, record or None, new_record)
    elif record:
        plan.add(LAYOUT_FILE, layout_path, record, None)
    return plan, {"exclusivity": exclusivity, "irq": irq_report,
                  "machine_cpus": format_cpulist(final_cpus),
                  "machine_held_by_guests": format_cpulist(held_cpus - need_cpus)}


# ---------------------------------------------------------------------------------------------
# Apply


def _run_hugepages(ctx, step):
    """Set one pool; a shortfall rolls every hugepage step of this execution back, then fails."""
    granted = _hugepages.set_pages(step.target, step.after)
    if granted != step.after:
        undone = [s for s in ctx.done if s.action is HUGEPAGES] + [step]
        for earlier in reversed(undone):
            _hugepages.set_pages(earlier.target, earlier.before)
        raise backend.BackendError(
            "asked the kernel for %d pages and it granted %d; rolled the hugepage change back to %s"
            % (step.after, granted, ", ".join("%s=%d" % (s.target, s.before) for s in undone)))
    return {"granted": granted}


def _run_irq_affinity(ctx, step):
    refused = _irq.set_affinity(step.detail["irq"], step.after, os.path.dirname(os.path.dirname(step.target)))
    if refused:
        _irq.remember_unmovable(ctx.get("root", "/"), step.detail["irq"])
        return {"refused": refused}
    return None


def _run_layout_file(_ctx, step):
    if step.after is None:
        try:
            os.unlink(step.target)
        except FileNotFoundError:
            pass
    else:
        _state.write_json_atomic("/", step.target.lstrip("/"), step.after)


HUGEPAGES = Action("hugepages", _run_hugepages, phase="hugepages")
CGROUP_CREATE = Action("cgroup_create", lambda _ctx, step: backend.create(step.target), phase="cgroups")
CGROUP_REMOVE = Action("cgroup_remove", lambda _ctx, step: backend.remove(step.target), phase="cgroups")
CGROUP_WRITE = Action("cgroup_write", lambda _ctx, step: backend.write_file(step.target, step.after), phase="cgroups")
IRQ_AFFINITY = Action("irq_affinity", _run_irq_affinity, phase="irqs")
LAYOUT_FILE = Action("layout_file", _run_layout_file, phase="record")
ACTIONS = (HUGEPAGES, CGROUP_CREATE, CGROUP_REMOVE, CGROUP_WRITE, IRQ_AFFINITY, LAYOUT_FILE)


def applied_report(plan, report):
    """Fold what the kernel answered during execution (hugepages granted, IRQs refused) into ``report``."""
    hugepages = {s.target: {"before": s.before, "asked": s.after} for s in plan.of(HUGEPAGES)}
    for step in plan.of(HUGEPAGES):
        if step.result:
            hugepages[step.target]["granted"] = step.result["granted"]
    for step in plan.of(IRQ_AFFINITY):
        if step.result and step.result.get("refused"):
            irq = step.detail["irq"]
            report["irq"]["steered"] = [i for i in report["irq"]["steered"] if i != irq]
            report["irq"]["unmovable"].append(irq)
            report["irq"].setdefault("refused", {})[irq] = step.result["refused"]
    report["hugepages"] = hugepages
    return report


# ---------------------------------------------------------------------------------------------
# The partition module's whole change


def module_argument_spec():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import libvirt_argument_spec

    spec = libvirt_argument_spec()
    spec.update(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        machine_cgroup=dict(type="str"),
    )
    spec.update(layout_argument_spec())
    return spec


def desired_spec(params, record):
    """The spec to resolve: the task's, or for ``absent`` the recorded one minus the named partitions."""
    if params["state"] == "present":
        return {key: params[key] for key in ("housekeeping", "partitions", "pool", "irq_steering", "kernel_args")}
    names = [p["name"] for p in params["partitions"]]
    if not names or not record:
        return None
    spec = record_to_spec(record)
    spec["partitions"] = [p for p in spec["partitions"] if p["name"] not in names]
    if not record.get("pool_auto", False):
        removed = [p["cpus"] for p in record["partitions"] if p["name"] in names]
        spec["pool"] = ",".join([record["pool"]] + removed)
    return spec


def plan_partition(node, params):
    """The partition module's plan and result (before execution) from the node and the task."""
    with node.timings.measure("plan"):
        spec = desired_spec(params, node.record)
        layout, current = prepare(spec, node, node.running_pins())
        if layout is not None and params["state"] == "present":
            record_auto = params["pool"] in (None, "auto")
        else:
            record_auto = bool(node.record and node.record.get("pool_auto"))
        plan, report = build_plan(layout, current, params["layout_file"], record_extra={"pool_auto": record_auto})
    reboot_required, kernel_args = kernel_args_needed(layout, node.topology.cmdline) if layout else (False, [])
    result = dict(
        layout=layout_to_record(layout) if layout else None,
        exclusivity=report["exclusivity"],
        irq=report["irq"],
        reboot_required=reboot_required,
        kernel_args_required=kernel_args,
        cgroup={"version": node.cgroups.cpuset_version, "machine": node.cgroups.machine.path,
                "machine_cpus": report["machine_cpus"], "machine_held_by_guests": report["machine_held_by_guests"]},
    )
    return plan, result


def partition_result(node, plan, result, check_mode, diff):
    """The module result after ``execute``: what the kernel answered, read back."""
    applied_report(plan, result)
    for name, rep in result["exclusivity"].items():
        # What the kernel holds now (v2 may read back "root invalid (reason)"); unknown before a
        # check-mode run applied it.
        applied_now = not check_mode or not plan
        rep["kernel_state"] = (backend.read_back_state(node.cgroups.machine.child(partition_cgroup_name(name)).path)
                               if applied_now else None)
    result.update(changed=plan.changed, plan=plan.to_list(), timings=node.timings.to_dict())
    if diff:
        result["diff"] = plan.diff(header="cpu layout of %s" % format_cpulist(node.topology.online))
    return result
