#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_regime
short_description: Move a whole node to the space-shared, time-shared or mixed regime, live
version_added: 0.1.0
description:
  - One call moves a node to a regime given its partition layout and the placement of its guests,
    without restarting any guest.
  - "The change is one ordered plan: preempt (managed save) the running guests that fit nowhere
    when O(overflow=preempt); lift guests into the target pool (and dedicated guests whose partition
    changes); re-carve partitions, hugepages, IRQ affinities and the machine cgroup; resume guests
    an earlier change preempted where they fit again; drop guests onto their partitions; record the
    regime on the node."
  - Before the first change the plan is written to a journal on the node and the journal is
    updated after every step. A run that was killed part-way is detected by the next run (see
    RV(interrupted_run)), which plans again from the node's real state and converges. No guest is
    destroyed by a regime change.
  - Guests not named in O(guests) keep a partition that survives unchanged, and otherwise go to
    the shared pool; in the C(space_shared) regime there is no pool, so such guests do not fit.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
attributes:
  check_mode:
    support: full
    description: Returns the plan a real run applies, changes nothing and writes no journal.
  diff_mode:
    support: full
    description: Shows every guest, cgroup, hugepage, IRQ and record change, before and after.
options:
  regime:
    description:
      - C(space_shared) (partitions, no pool beyond housekeeping), C(time_shared) (no partitions) or
        C(mixed) (both). The layout given must amount to it.
    type: str
    required: true
    choices: [space_shared, time_shared, mixed]
  housekeeping:
    description: CPUs kept for the host, libvirtd, emulator and I/O threads and IRQs (cpu-list).
    type: str
    required: true
  partitions:
    description:
      - The node's partitions in the target regime, as for M(hpcvirt.regime.partition); empty for
        C(time_shared).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Partition name.
        type: str
        required: true
      cpus:
        description: Its CPUs (cpu-list); or give O(partitions[].count).
        type: str
      count:
        description: How many CPUs, picked by topology (whole cores, one NUMA node where possible).
        type: int
      numa_nodes:
        description: NUMA nodes its CPUs and memory must come from.
        type: list
        elements: int
      hugepages:
        description: Hugepages to reserve on its NUMA node(s).
        type: dict
        suboptions:
          size:
            description: Page size.
            type: str
            default: 2M
          count:
            description: Number of pages.
            type: int
            required: true
      exclusive:
        description: Ask the kernel for cpuset exclusivity where it can hold it.
        type: bool
        default: true
      isolate:
        description: Kernel-level isolation (v2 C(isolated), v1 C(sched_load_balance=0)).
        type: bool
        default: false
  pool:
    description: The shared pool (cpu-list), or C(auto) for every online CPU left.
    type: str
    default: auto
  irq_steering:
    description: Move IRQ affinities off partition CPUs onto housekeeping.
    type: bool
    default: false
  kernel_args:
    description: Kernel isolation arguments to report as needing a reboot when missing.
    type: list
    elements: str
    default: []
    choices: [isolcpus, nohz_full, rcu_nocbs]
  guests:
    description:
      - Placement of named guests in the target regime, as for M(hpcvirt.regime.placement).
        Guests not named keep a surviving partition or go to the pool.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Domain name.
        type: str
        required: true
      placement:
        description: C(dedicated) or C(shared).
        type: str
        required: true
        choices: [dedicated, shared]
      partition:
        description: For C(dedicated), the partition, or C(auto).
        type: str
        default: auto
      cpu_shares:
        description: For C(shared), the CPU weight.
        type: int
      vcpu_quota:
        description: For C(shared), microseconds per period each vCPU may use, or -1 for no limit.
        type: int
  overflow:
    description:
      - What to do with running guests that do not fit the target regime. C(fail) refuses the whole
        change before anything moves; C(preempt) saves them to disk (libvirt managed save) and the
        reverse change resumes them.
    type: str
    choices: [fail, preempt]
    default: fail
  layout_file:
    description: Where the node's layout is recorded.
    type: path
    default: /etc/hpcvirt/layout.json
notes:
  - The regime is recorded in C(/var/lib/hpcvirt/regime.json) and reported by M(hpcvirt.regime.node_info).
  - The journal is C(/var/lib/hpcvirt/journal/node_regime.json) while a change is under way.
seealso:
  - module: hpcvirt.regime.partition
  - module: hpcvirt.regime.placement
  - module: hpcvirt.regime.node_info
"""

EXAMPLES = r"""
- name: Give the node to a bulk-synchronous job (two partitions, guests dropped into them)
  hpcvirt.regime.node_regime:
    regime: space_shared
    housekeeping: "0,64"
    partitions:
      - {name: mpi0, count: 30, numa_nodes: [0], hugepages: {size: 1G, count: 60}}
      - {name: mpi1, count: 32, numa_nodes: [1], hugepages: {size: 1G, count: 60}}
    irq_steering: true
    guests:
      - {name: rank0, placement: dedicated, partition: mpi0}
      - {name: rank1, placement: dedicated, partition: mpi1}
    overflow: preempt

- name: Back to time-sharing; preempted guests come back
  hpcvirt.regime.node_regime:
    regime: time_shared
    housekeeping: "0,64"
"""

RETURN = r"""
regime:
  description: The regime the node is in after the run.
  returned: always
  type: str
plan:
  description: Every step in the order applied (action, target, before, after).
  returned: always
  type: list
  elements: dict
guests:
  description: Per guest, what the change did.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    fate:
      description: C(placed), C(preempted), C(resumed) (and placed), or C(untouched) (stopped and fitting nowhere).
      type: str
    placement:
      description: Mode, partition and CPUs reached, for placed guests.
      type: dict
    live_ms:
      description: Milliseconds the live changes of this guest took.
      type: float
    not_live:
      description: Changes that wait for the guest's next start.
      type: list
      elements: str
layout:
  description: The layout recorded on the node.
  returned: always
  type: dict
exclusivity:
  description: Per partition, whether the kernel holds it exclusive and what blocks it.
  returned: always
  type: dict
reboot_required:
  description: Whether kernel arguments asked for in O(kernel_args) need a reboot.
  returned: always
  type: bool
kernel_args_required:
  description: The exact kernel arguments missing, when RV(reboot_required).
  returned: always
  type: list
  elements: str
interrupted_run:
  description: The journal of an earlier run that was killed part-way (target, steps done), or null.
  returned: always
  type: dict
timings:
  description: Milliseconds per phase (read, plan, preempt, lift, carve, resume, drop, record).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import CgroupError, detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._checkpoint import checkpoint_record, record
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import read_domain_metadata
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import observe_layout, read_guests
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import (
    PlacementError,
    apply_guest_plan,
    guests_argument_spec,
    requests_from_params,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan, Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._regime import (
    PREEMPTED_BY,
    Journal,
    RegimeError,
    check_regime,
    layout_for_placement,
    plan_regime,
    predicted_pins,
    record_changes,
    write_regime,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import REGIME_FILE, read_json
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology

ROOT = "/"
CARVE_ACTIONS = ("hugepages", "cgroup_create", "cgroup_remove", "cgroup_write", "irq_affinity", "layout_file")
GUEST_ACTIONS = ("pin_vcpu", "pin_emulator", "pin_iothread", "scheduler", "numatune", "metadata")


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        regime=dict(type="str", required=True, choices=["space_shared", "time_shared", "mixed"]),
        guests=dict(guests_argument_spec(), default=[]),
        overflow=dict(type="str", default="fail", choices=["fail", "preempt"]),
    )
    spec.update(part.layout_argument_spec())
    spec["housekeeping"]["required"] = True
    return spec


def build_plan(decision, carve, regime_change):
    """The whole change as one plan, in the order it is applied."""
    plan = Plan()
    placements = decision["placements"]
    resumed = set(decision["resume"])
    for name in decision["preempt"]:
        plan.add("preempt", name, "running", "preempted (managed save)", guest=name)
    for name, (guest_plan, want) in placements.items():
        if want["mode"] == "shared" and name not in resumed:
            plan.extend(guest_plan)
    plan.extend(carve)
    for name in decision["resume"]:
        plan.add("resume", name, "preempted (managed save)", "running", guest=name)
        plan.extend(placements[name][0])
    for name, (guest_plan, want) in placements.items():
        if want["mode"] == "dedicated" and name not in resumed:
            plan.extend(guest_plan)
    if regime_change:
        before, after = regime_change
        plan.add("record_regime", "/" + REGIME_FILE, before, after)
    return plan


def phase_of(step):
    if step.action in CARVE_ACTIONS:
        return "carve"
    if step.action in GUEST_ACTIONS:
        return "place"
    return step.action


def apply_plan(module, conn, plan, regime, journal, ncpus, timings):
    """Apply every step, journalling progress; returns per-guest live milliseconds and not-live notes."""
    live_ms, not_live = {}, {}
    steps = list(plan)
    index = 0
    while index < len(steps):
        step = steps[index]
        phase = phase_of(step)
        if phase == "carve":
            # The partition plan is applied as one block so its hugepage rollback covers it all.
            block = []
            while index < len(steps) and phase_of(steps[index]) == "carve":
                block.append(steps[index])
                index += 1
            try:
                part.apply_plan(Plan(block), timings)
            except part.ApplyError as exc:
                fail(module, "re-carving the node: %s" % exc, plan, journal)
            journal.step_done(index)
            continue
        guest = step.detail.get("guest") or step.target
        try:
            if phase == "place":
                dom = conn.lookupByName(guest)
                guest_timings = Timings()
                skipped = apply_guest_plan(lv.libvirt, dom, Plan([step]), "both", ncpus, guest_timings)
                spent = sum(guest_timings.to_dict().values())
                live_ms[guest] = live_ms.get(guest, 0.0) + spent
                timings.add("place", spent)
                not_live.setdefault(guest, []).extend(skipped)
            elif phase == "preempt":
                with timings.measure("preempt"):
                    preempt(conn.lookupByName(guest), regime)
            elif phase == "resume":
                with timings.measure("resume"):
                    resume(conn.lookupByName(guest))
            elif phase == "record_regime":
                with timings.measure("record"):
                    write_regime(ROOT, step.after)
        except lv.libvirt.libvirtError as exc:
            fail(module, "%s %s: %s" % (step.action, step.target, lv.error_text(exc)), plan, journal)
        index += 1
        journal.step_done(index)
    return live_ms, not_live


def preempt(dom, regime):
    """Record why, then save the guest's memory to disk (managed save); it stops running."""
    metadata = read_domain_metadata(dom)
    entry = checkpoint_record(metadata.get("checkpoint", {}), "preempt", reason="node_regime: %s" % regime)
    entry["by"] = PREEMPTED_BY
    record(lv.libvirt, dom, metadata, entry)
    dom.managedSave(0)


def resume(dom):
    """Start from the managed save image (the guest continues where it stopped) and record it."""
    if not dom.isActive():
        dom.create()
    metadata = read_domain_metadata(dom)
    entry = checkpoint_record(metadata.get("checkpoint", {}), "resume")
    record(lv.libvirt, dom, metadata, entry)


def fail(module, msg, plan, journal):
    module.fail_json(msg="%s. The journal %s records how far the change got; run again to converge."
                     % (msg, journal.path), plan=plan.to_list(), steps_done=journal.data["done"] if journal.data else 0)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    lv.require_libraries(module, need_lxml=False)
    params = module.params
    timings = Timings()
    journal = Journal(ROOT)
    interrupted = journal.previous()

    with timings.measure("read"):
        topology = read_topology(ROOT)
        try:
            cgroups = detect_layout(ROOT)
            layout_record = read_json(ROOT, params["layout_file"].lstrip("/"))
        except (CgroupError, ValueError) as exc:
            module.fail_json(msg="node: %s" % exc)
        if cgroups.cpuset_version is None:
            module.fail_json(msg="node: the cpuset controller is not mounted (neither v1 nor enabled in v2)")
        conn = lv.open_connection(module)
        ncpus = lv.host_cpu_count(conn)
        found = observe_layout(topology, cgroups, layout_record)
        partitions = {p["name"]: p for p in found["partitions"]}
        with lv.libvirt_errors(module, "reading guests"):
            guests = read_guests(lv.libvirt, conn.listAllDomains(0), partitions, parse_cpulist(found["pool"]),
                                 lv.DOMAIN_STATES)
        for guest in guests:
            guest.setdefault("hpcvirt", {})

    spec = {key: params[key] for key in ("housekeeping", "partitions", "pool", "irq_steering", "kernel_args")}
    with timings.measure("plan"):
        try:
            current_cpus = {name: cgroup.cpus for name, cgroup in cgroups.partitions().items()}
            target = layout_for_placement(part.resolve(spec, topology, current_cpus))
            check_regime(params["regime"], target)
            requested = {r["name"]: r for r in requests_from_params(params["guests"])}
            decision = plan_regime(params["regime"], target, guests, requested, topology, params["overflow"])
            pins = predicted_pins(guests, decision["placements"], set(decision["preempt"]))
            layout, current = part.prepare(spec, topology, cgroups, layout_record, pins)
        except (RegimeError, PlacementError, part.LayoutError) as exc:
            module.fail_json(msg=str(exc), changed=False, interrupted_run=interrupted)
        carve, report = part.build_plan(layout, current, params["layout_file"],
                                        record_extra={"pool_auto": params["pool"] in (None, "auto")})
        new_record = part.layout_to_record(layout)
        plan = build_plan(decision, carve, record_changes(ROOT, params["regime"], new_record))

    reboot_required, kernel_args = part.kernel_args_needed(layout, topology.cmdline)
    live_ms, not_live = {}, {}
    if plan and not module.check_mode:
        journal.begin(params["regime"], [s.describe() for s in plan])
        live_ms, not_live = apply_plan(module, conn, plan, params["regime"], journal, ncpus, timings)
        journal.finish()
    elif interrupted and not module.check_mode:
        journal.finish()       # an interrupted run left nothing more to do: the node has converged

    fates = []
    for name, (_plan_unused, want) in decision["placements"].items():
        fates.append({"name": name, "fate": "resumed" if name in decision["resume"] else "placed",
                      "placement": {"mode": want["mode"], "partition": want["partition"],
                                    "cpus": format_cpulist(frozenset().union(*want["vcpu_pins"]))},
                      "live_ms": round(live_ms.get(name, 0.0), 3), "not_live": not_live.get(name, [])})
    for name in decision["preempt"]:
        fates.append({"name": name, "fate": "preempted", "reason": decision["unfit"][name]})
    for name, reason in decision["untouched"].items():
        fates.append({"name": name, "fate": "untouched", "reason": reason})

    module.exit_json(
        changed=plan.changed or bool(interrupted and not module.check_mode),
        regime=params["regime"],
        plan=plan.to_list(),
        guests=fates,
        layout=new_record,
        exclusivity=report["exclusivity"],
        irq=report["irq"],
        reboot_required=reboot_required,
        kernel_args_required=kernel_args,
        interrupted_run=interrupted,
        diff=plan.diff("regime of %s" % format_cpulist(topology.online)) if module._diff else None,
        timings=timings.to_dict(),
    )


if __name__ == "__main__":
    main()
