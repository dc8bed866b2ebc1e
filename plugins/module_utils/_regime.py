# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Moving a whole node to a regime: which guest goes where, in which order, and a journal.

A regime change composes the placement planner (``_placement``) and the partition planner
(``_partition``) into one ordered plan:

1. preempt (managed save) the running guests that fit nowhere in the target, when asked to;
2. lift the guests that end up shared into the target pool, and lift dedicated guests whose
   partition changes, so no guest is pinned into a partition that is about to change;
3. re-carve the node (partitions, hugepages, IRQs, machine cgroup, layout file);
4. resume guests an earlier transition preempted, where they fit again;
5. drop the guests that end up dedicated into their partitions;
6. record the regime on the node.

Every step is idempotent and the plan is always computed from the node's real state, so a run
that was killed part-way converges when run again. The journal records what a run set out to do
and how far it got, so the next run can say that it is resuming.
"""

from __future__ import annotations

from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils import _placement
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._journal import Journal, NodeLock
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import plan_placements
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, StepFailed, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    REGIME_FILE,
    now_iso,
    write_json_atomic,
)

PREEMPTED_BY = "node_regime"


class RegimeError(HpcvirtError, ValueError):
    """A regime change that cannot be made; nothing was changed. The message says why."""


def layout_for_placement(layout):
    """A resolved partition layout in the form the placement planner reads (cpu-list strings)."""
    return {
        "housekeeping": format_cpulist(layout["housekeeping"]),
        "pool": format_cpulist(layout["pool"]),
        "partitions": [{"name": p["name"], "cpus": format_cpulist(p["cpus"]), "mems": format_cpulist(p["mems"])}
                       for p in layout["partitions"]],
    }


def check_regime(regime, layout):
    """Refuse a layout that does not amount to ``regime``."""
    names = [p["name"] for p in layout["partitions"]]
    pool_beyond = parse_cpulist(layout["pool"]) - parse_cpulist(layout["housekeeping"])
    if regime == "time_shared" and names:
        raise RegimeError("partitions: a time_shared node has no partitions (got %s); use regime mixed to keep "
                          "some" % ", ".join(names))
    if regime == "space_shared":
        if not names:
            raise RegimeError("partitions: a space_shared node needs at least one partition")
        if pool_beyond:
            raise RegimeError("pool: a space_shared node keeps no shared pool beyond housekeeping (the layout leaves "
                              "CPUs %s in the pool); give them to partitions or use regime mixed"
                              % format_cpulist(pool_beyond))
    if regime == "mixed" and (not names or not pool_beyond):
        raise RegimeError("partitions: a mixed node needs at least one partition and a pool beyond housekeeping "
                          "(partitions: %s, pool beyond housekeeping: %s)"
                          % (", ".join(names) or "none", format_cpulist(pool_beyond) or "none"))


def _preempted_by_us(guest):
    checkpoint = (guest.get("hpcvirt") or {}).get("checkpoint", {})
    return (not guest["active"] and guest.get("managed_save")
            and checkpoint.get("state") == "preempted" and checkpoint.get("by") == PREEMPTED_BY)


def default_request(regime, guest, target):
    """Where a guest nobody named goes: it keeps a partition that survives unchanged, else the pool."""
    # A stopped or saved guest's pins are what it had when it stopped, read against today's layout
    # (a pool guest saved on a time_shared node looks "dedicated" once that CPU is a partition):
    # only its recorded intent counts.
    placement = (guest.get("placement") or {}) if guest.get("active") else {}
    intent = (guest.get("hpcvirt") or {}).get("placement", {})
    partition = placement.get("partition") or intent.get("partition")
    if regime != "time_shared" and (placement.get("observed") == "dedicated" or intent.get("mode") == "dedicated"):
        wanted = {p["name"]: parse_cpulist(p["cpus"]) for p in target["partitions"]}
        if partition in wanted:
            return {"name": guest["name"], "placement": "dedicated", "partition": partition}
    request = {"name": guest["name"], "placement": "shared"}
    for key in ("cpu_shares", "vcpu_quota"):
        if intent.get(key) not in (None, ""):
            request[key] = int(intent[key])
    return request


def plan_regime(regime, target, guests, requested, topology=None, overflow="fail"):
    """Decide every guest's fate for ``target`` (a layout as the placement planner reads it).

    ``requested``: the operator's placement requests by guest name (others get
    ``default_request``). Returns a dict with ``placements`` ({name: (plan, desired)}, lifts first),
    ``preempt`` (running guests to managed-save), ``resume`` (guests to bring back from an earlier
    preemption before they are placed), ``untouched`` (stopped guests that fit nowhere: name ->
    reason) and ``unfit`` (name -> reason, for running guests; only with overflow=fail it raises).
    """
    by_name = {g["name"]: g for g in guests}
    for name in requested:
        if name not in by_name:
            raise RegimeError("guests: no guest '%s' on this node" % name)

    involved, resume_candidates = [], []
    for guest in guests:
        if guest["active"] or guest.get("persistent"):
            involved.append(guest)
        if _preempted_by_us(guest):
            resume_candidates.append(guest["name"])

    # Operator-named guests first, then running ones, then the ones to resume: the placement
    # planner keeps this order among equals, so an inferred request never beats a named one.
    involved.sort(key=lambda g: (g["name"] not in requested, not g["active"]))
    unfit, requests, planning = {}, [], []
    for guest in involved:
        request = dict(requested.get(guest["name"]) or default_request(regime, guest, target))
        request["name"] = guest["name"]
        if request["placement"] == "shared" and regime == "space_shared":
            unfit[guest["name"]] = "a space_shared node has no shared pool"
            continue
        requests.append(request)
        view = dict(guest)
        if guest["name"] in resume_candidates:
            view["active"] = True          # it will run again, so it must be admitted like one
            view["resuming"] = True
        planning.append(view)

    refused = {}
    placements = plan_placements(target, planning, requests, topology, refused=refused)
    unfit.update(refused)

    result = {"placements": {}, "preempt": [], "resume": [], "untouched": {}, "unfit": {}}
    for name, reason in sorted(unfit.items()):
        guest = by_name[name]
        if guest["active"]:
            result["unfit"][name] = reason
        else:
            result["untouched"][name] = reason
    if result["unfit"] and overflow == "fail":
        raise RegimeError("guests do not fit the %s layout and overflow is fail: %s. Set overflow: preempt to "
                          "save them to disk (managed save) until the node returns to a regime they fit, or "
                          "move them away first." % (regime, "; ".join("%s (%s)" % kv for kv in sorted(result["unfit"].items()))))
    result["preempt"] = sorted(result["unfit"])
    result["resume"] = [name for name in resume_candidates if name in placements]
    result["placements"] = placements
    return result


def predicted_pins(guests, placements, leaving):
    """vCPU pins that hold partition CPUs once the placements are applied (name -> [sets]).

    This is what the partition planner guards: only guests that end up dedicated hold a
    partition; guests lifted into the pool float over whatever the pool becomes.
    """
    pins = {}
    for guest in guests:
        name = guest["name"]
        if name in leaving:
            continue
        if name in placements:
            if placements[name][1]["mode"] == "dedicated":
                pins[name] = list(placements[name][1]["vcpu_pins"])
        elif guest["active"]:
            pins[name] = [parse_cpulist(guest["vcpu_pins"][str(i)]) for i in range(guest["vcpus"]["maximum"])]
    return pins


def regime_record(regime, layout_record):
    return {"regime": regime, "layout": {k: layout_record.get(k) for k in ("housekeeping", "pool")},
            "partitions": sorted(p["name"] for p in layout_record.get("partitions", []))}


def record_changes(recorded, regime, layout_record):
    """The regime file step's before and after, or None when the node already records it."""
    want = regime_record(regime, layout_record)
    have = {k: v for k, v in (recorded or {}).items() if k != "changed_at"}
    if have == want:
        return None
    return recorded, want


# ---------------------------------------------------------------------------------------------
# Actions of a regime change (guest placement and re-carving are the placement and partition
# planners' own actions)


def _run_preempt(ctx, step):
    """Record why, then save the guest's memory to disk (managed save); it stops running."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._checkpoint import checkpoint_record, record
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import read_domain_metadata

    dom = ctx.conn.lookupByName(step.target)
    metadata = read_domain_metadata(dom)
    entry = checkpoint_record(metadata.get("checkpoint", {}), "preempt", reason="node_regime: %s" % ctx.regime)
    entry["by"] = PREEMPTED_BY
    record(ctx.libvirt, dom, metadata, entry)
    dom.managedSave(0)


def _run_resume(ctx, step):
    """Start from the managed save image (the guest continues where it stopped) and record it."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._checkpoint import checkpoint_record, record
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import read_domain_metadata

    dom = ctx.conn.lookupByName(step.target)
    if not dom.isActive():
        dom.create()
    metadata = read_domain_metadata(dom)
    record(ctx.libvirt, dom, metadata, checkpoint_record(metadata.get("checkpoint", {}), "resume"))


def _run_record_regime(ctx, step):
    write_regime(ctx.root, step.after)


PREEMPT = Action("preempt", _run_preempt, phase="preempt")
RESUME = Action("resume", _run_resume, phase="resume")
RECORD_REGIME = Action("record_regime", _run_record_regime, phase="record")
# Timings of a regime change per phase: the partition planner's steps are one "carve".
PHASES = {action: "carve" for action in part.ACTIONS}
PHASES.update({action: "place" for action in _placement.GUEST_ACTIONS})


def build_plan(decision, carve, regime_change):
    """The whole change as one plan, in the order it is applied."""
    plan = Plan()
    placements = decision["placements"]
    resumed = set(decision["resume"])
    for name in decision["preempt"]:
        plan.add(PREEMPT, name, "running", "preempted (managed save)", guest=name)
    for name, (guest_plan, want) in placements.items():
        if want["mode"] == "shared" and name not in resumed:
            plan.extend(guest_plan)
    plan.extend(carve)
    for name in decision["resume"]:
        plan.add(RESUME, name, "preempted (managed save)", "running", guest=name)
        plan.extend(placements[name][0])
    for name, (guest_plan, want) in placements.items():
        if want["mode"] == "dedicated" and name not in resumed:
            plan.extend(guest_plan)
    if regime_change:
        before, after = regime_change
        plan.add(RECORD_REGIME, "/" + REGIME_FILE, before, after)
    return plan


# ---------------------------------------------------------------------------------------------
# The node_regime module's whole change


def module_argument_spec():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import libvirt_argument_spec

    spec = libvirt_argument_spec()
    spec.update(
        regime=dict(type="str", required=True, choices=["space_shared", "time_shared", "mixed"]),
        guests=dict(_placement.guests_argument_spec(), default=[]),
        overflow=dict(type="str", default="fail", choices=["fail", "preempt"]),
    )
    spec.update(part.layout_argument_spec())
    spec["housekeeping"]["required"] = True
    return spec


class RegimeChange:
    """One node_regime run: the plan from the node's real state, its execution and its result."""

    def __init__(self, node, params):
        self.node = node
        self.params = params
        self.journal = Journal("node_regime", node.root, target=params["regime"])
        self.interrupted = self.journal.previous()
        with node.timings.measure("plan"):
            self._plan()

    def _plan(self):
        node, params = self.node, self.params
        spec = {key: params[key] for key in ("housekeeping", "partitions", "pool", "irq_steering", "kernel_args")}
        current_cpus = {name: cgroup.cpus for name, cgroup in node.cgroups.partitions().items()}
        target = layout_for_placement(part.resolve(spec, node.topology, current_cpus))
        check_regime(params["regime"], target)
        requested = {r["name"]: r for r in _placement.requests_from_params(params["guests"])}
        self.decision = plan_regime(params["regime"], target, node.guests, requested, node.topology, params["overflow"])
        pins = predicted_pins(node.guests, self.decision["placements"], set(self.decision["preempt"]))
        self.layout, current = part.prepare(spec, node, pins)
        carve, self.report = part.build_plan(self.layout, current, params["layout_file"],
                                             record_extra={"pool_auto": params["pool"] in (None, "auto")})
        self.new_record = part.layout_to_record(self.layout)
        self.plan = build_plan(self.decision, carve,
                               record_changes(node.regime_record, params["regime"], self.new_record))

    def execute(self, check_mode):
        """Carry the plan out under the node lock, journalled; nothing at all in check mode."""
        if check_mode:
            return
        node = self.node
        ctx = Context(libvirt=_libvirt(), conn=node.conn, domains=node.domains, ncpus=node.ncpus,
                      affect="both", root=node.root, regime=self.params["regime"])
        with NodeLock(node.root, what="another regime change"):
            try:
                execute(self.plan, ctx, False, node.timings, journal=self.journal if self.plan else None,
                        phases=PHASES)
            except StepFailed as exc:
                raise RegimeError("%s. The journal %s records how far the change got; run again to converge"
                                  % (exc, self.journal.path), plan=self.plan.to_list(), steps_done=exc.index,
                                  changed=exc.index > 0)
            if not self.plan and self.interrupted:
                self.journal.finish()   # an interrupted run left nothing more to do: the node has converged

    def fates(self):
        decision = self.decision
        fates = []
        for name, (_unused, want) in decision["placements"].items():
            live_ms, not_live = _placement.guest_outcome(self.plan, name)
            fates.append({"name": name, "fate": "resumed" if name in decision["resume"] else "placed",
                          "placement": _placement.placed(want), "live_ms": live_ms, "not_live": not_live})
        for name in decision["preempt"]:
            fates.append({"name": name, "fate": "preempted", "reason": decision["unfit"][name]})
        for name, reason in decision["untouched"].items():
            fates.append({"name": name, "fate": "untouched", "reason": reason})
        return fates

    def result(self, check_mode, diff):
        reboot_required, kernel_args = part.kernel_args_needed(self.layout, self.node.topology.cmdline)
        return dict(
            changed=self.plan.changed or bool(self.interrupted and not check_mode),
            regime=self.params["regime"],
            plan=self.plan.to_list(),
            guests=self.fates(),
            layout=self.new_record,
            exclusivity=self.report["exclusivity"],
            irq=part.applied_report(self.plan, {"irq": self.report["irq"]})["irq"],
            reboot_required=reboot_required,
            kernel_args_required=kernel_args,
            interrupted_run=self.interrupted,
            diff=self.plan.diff("regime of %s" % format_cpulist(self.node.online)) if diff else None,
            timings=self.node.timings.to_dict(),
        )


def _libvirt():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import libvirt
    return libvirt


def write_regime(root, record):
    data = dict(record)
    data["changed_at"] = now_iso()
    write_json_atomic(root, REGIME_FILE, data)
