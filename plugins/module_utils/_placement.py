# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where guests' threads run: admission control and the plan of live pin and tuning changes.

A guest is **dropped** into a partition (``dedicated``: each vCPU pinned to its own CPU of the
partition, emulator and I/O threads on housekeeping, no CPU quota, NUMA memory on the partition's
nodes) or **lifted** into the pool (``shared``: every vCPU floats over the pool CPUs, with
``cpu_shares`` and ``vcpu_quota``). Everything here is pure: it takes the layout as
``_node.observe_layout`` reports it and guests as ``_node.read_guest`` reports them, and returns a
``_plan.Plan`` whose steps ``apply_step`` carries out through libvirt.

Admission control: no two guests on one dedicated CPU, and no partition CPU in any other guest's
pins (a guest floating over a partition CPU must be lifted into the pool first). A drop that cannot
be admitted raises ``PlacementError`` naming the guest, the partition and what blocks it.
"""

from __future__ import annotations

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Plan

# cgroup v1 reports "no quota" as -1 in live values and 0 in the persistent config; the largest
# value the kernel accepts also means no limit.
_QUOTA_UNLIMITED_MAX = 17592186044415
DEFAULT_SHARES = 1024


def guests_argument_spec():
    """The ``guests`` option of the placement and node_regime modules."""
    return dict(type="list", elements="dict", options=dict(
        name=dict(type="str", required=True),
        placement=dict(type="str", required=True, choices=["dedicated", "shared"]),
        partition=dict(type="str", default="auto"),
        cpu_shares=dict(type="int"),
        vcpu_quota=dict(type="int"),
    ))


def requests_from_params(entries):
    """The module's ``guests`` entries as planner requests (unset values and a shared guest's
    default partition left out)."""
    requests = []
    for entry in entries:
        request = {k: v for k, v in entry.items() if v is not None}
        if request.get("placement") == "shared":
            request.pop("partition", None)
        requests.append(request)
    return requests


class PlacementError(HpcvirtError, ValueError):
    """A placement that cannot be admitted or is badly asked for; the message says why."""


def quota_is_unlimited(quota):
    return quota is None or quota <= 0 or quota >= _QUOTA_UNLIMITED_MAX


def normalise_request(index, request):
    """Validate one entry of the module's ``guests`` list; return it with defaults filled in."""
    field = "guests[%d]" % index
    name = request.get("name")
    if not name:
        raise PlacementError("%s.name: a guest name is required" % field)
    mode = request.get("placement")
    if mode not in ("dedicated", "shared"):
        raise PlacementError("%s.placement: must be 'dedicated' or 'shared', got %r" % (field, mode))
    out = {"name": name, "placement": mode}
    if mode == "dedicated":
        out["partition"] = request.get("partition") or "auto"
        for key in ("cpu_shares", "vcpu_quota"):
            if request.get(key) is not None:
                raise PlacementError("%s.%s: only for shared placement; a dedicated guest owns its CPUs"
                                     % (field, key))
    else:
        if request.get("partition"):
            raise PlacementError("%s.partition: only for dedicated placement" % field)
        shares = request.get("cpu_shares")
        quota = request.get("vcpu_quota")
        if shares is not None and not 2 <= shares <= 262144:
            raise PlacementError("%s.cpu_shares: %d is outside 2..262144" % (field, shares))
        if quota is not None and quota != -1 and not 1000 <= quota <= _QUOTA_UNLIMITED_MAX:
            raise PlacementError("%s.vcpu_quota: %d must be -1 (no limit) or 1000..%d microseconds"
                                 % (field, quota, _QUOTA_UNLIMITED_MAX))
        out["cpu_shares"] = shares
        out["vcpu_quota"] = quota
    return out


def _guest_pins(guest):
    """Per-vCPU pin sets of a reported guest, for all vCPUs up to its maximum."""
    maximum = guest["vcpus"]["maximum"]
    return [parse_cpulist(guest["vcpu_pins"].get(str(i), "")) for i in range(maximum)]


def _partition_order(topology, cpus):
    """A partition's CPUs in core order (SMT siblings next to each other), for 1:1 vCPU pins."""
    if topology is None:
        return sorted(cpus)
    ordered = [cpu for core in topology.cores() for cpu in core if cpu in cpus]
    return ordered + sorted(set(cpus) - set(ordered))


class NodeView:
    """The node as the planner sees it: partitions, pool, housekeeping, and who uses which CPU."""

    def __init__(self, layout, guests, topology=None):
        self.topology = topology
        self.housekeeping = parse_cpulist(layout["housekeeping"])
        self.pool = parse_cpulist(layout["pool"])
        self.partitions = {p["name"]: {"cpus": parse_cpulist(p["cpus"]), "mems": parse_cpulist(p.get("mems", ""))}
                           for p in layout["partitions"]}
        self.guests = {g["name"]: g for g in guests}
        # CPU -> set of running guests whose vCPUs may run there (only partition CPUs matter for
        # admission). Stopped guests hold nothing until they start; node_regime moves their
        # configuration along with the running ones.
        self.users = {}
        for guest in guests:
            if not guest.get("active", True):
                continue
            for pins in _guest_pins(guest):
                for cpu in pins:
                    self.users.setdefault(cpu, set()).add(guest["name"])

    def partition_of(self, cpu):
        for name, part in self.partitions.items():
            if cpu in part["cpus"]:
                return name
        return None

    def release(self, name):
        for users in self.users.values():
            users.discard(name)

    def occupy(self, name, cpus):
        for cpu in cpus:
            self.users.setdefault(cpu, set()).add(name)

    def blockers(self, name, cpus):
        """Other guests that may run on any of ``cpus``: cpu -> sorted names."""
        found = {}
        for cpu in sorted(cpus):
            others = sorted(self.users.get(cpu, set()) - {name})
            if others:
                found[cpu] = others
        return found


def new_guest(name, vcpus, nodeset=None):
    """A guest not defined yet, as the planner sees it: holds no CPUs, may land anywhere."""
    return {"name": name, "active": True, "vcpus": {"current": vcpus, "maximum": vcpus},
            "vcpu_pins": {}, "numatune": {"nodeset": nodeset} if nodeset else {}, "hpcvirt": {}}


def view_of(node, extra_guests=()):
    """The planner's view of a ``_node.NodeState`` (plus guests planned but not defined yet)."""
    return NodeView(node.layout, list(node.guests) + list(extra_guests), node.topology)


def _guest_numa_nodes(view, guest):
    nodeset = (guest.get("numatune") or {}).get("nodeset")
    if nodeset:
        return parse_cpulist(nodeset)
    if view.topology is None:
        return frozenset()
    pins = frozenset().union(*_guest_pins(guest)) if guest["vcpus"]["maximum"] else frozenset()
    return view.topology.nodes_of(pins & view.topology.online)


def choose_partition(view, guest, request):
    """The partition and CPUs a dedicated guest gets (its current ones when they still hold)."""
    name = guest["name"]
    need = guest["vcpus"]["maximum"]
    current = _guest_pins(guest)
    wanted = request["partition"]

    def free_cpus(part_name):
        part = view.partitions[part_name]["cpus"]
        return frozenset(cpu for cpu in part if not (view.users.get(cpu, set()) - {name}))

    def already_there(part_name):
        used = frozenset().union(*current) if current else frozenset()
        return (all(len(p) == 1 for p in current) and len(used) == len(current)
                and used <= view.partitions[part_name]["cpus"])

    if wanted != "auto":
        if wanted not in view.partitions:
            raise PlacementError("guest '%s': partition '%s' does not exist on this node (partitions: %s)"
                                 % (name, wanted, ", ".join(sorted(view.partitions)) or "none"))
        candidates = [wanted]
    else:
        if not view.partitions:
            raise PlacementError("guest '%s': placement dedicated with partition auto, but the node has "
                                 "no partitions" % name)
        candidates = sorted(view.partitions)
        for part_name in candidates:
            if already_there(part_name):
                candidates = [part_name]
                break
        else:
            # Best fit on the guest's NUMA node(s): fewest free CPUs left over, then name.
            nodes = _guest_numa_nodes(view, guest)
            fitting = []
            for part_name in candidates:
                free = free_cpus(part_name)
                # auto takes a whole free partition; naming one lets several guests share it.
                if len(free) < need or free != view.partitions[part_name]["cpus"]:
                    continue
                local = view.topology is None or not nodes or view.topology.nodes_of(free) <= nodes
                fitting.append((0 if local else 1, len(free) - need, part_name))
            if not fitting:
                sizes = ", ".join("%s has %d free" % (p, len(free_cpus(p))) for p in candidates)
                raise PlacementError("guest '%s': no partition can take %d vCPUs (%s)" % (name, need, sizes))
            candidates = [sorted(fitting)[0][2]]

    part_name = candidates[0]
    part_cpus = view.partitions[part_name]["cpus"]
    if already_there(part_name) and not view.blockers(name, frozenset().union(*current)):
        return part_name, [min(p) for p in current]
    if len(part_cpus) < need:
        raise PlacementError("guest '%s': partition '%s' has %d CPUs (%s) but the guest has %d vCPUs"
                             % (name, part_name, len(part_cpus), format_cpulist(part_cpus), need))
    busy = view.blockers(name, part_cpus)
    free = [cpu for cpu in _partition_order(view.topology, part_cpus) if cpu not in busy]
    if len(free) < need:
        detail = "; ".join("CPU %d used by %s" % (cpu, ", ".join(users)) for cpu, users in sorted(busy.items()))
        raise PlacementError("guest '%s': cannot drop into partition '%s' (%s): %d of its %d CPUs are free "
                             "and the guest needs %d: %s. Lift those guests into the pool first."
                             % (name, part_name, format_cpulist(part_cpus), len(free), len(part_cpus), need, detail))
    return part_name, free[:need]


def desired_state(view, guest, request):
    """The pins and tuning a request asks for, as comparable values: THE placement policy.

    Every module that places a guest (placement, node_regime, vse, fleet, migrate on arrival) asks
    this function, so they all agree:

    - ``dedicated``: each vCPU pinned 1:1 to a CPU of one partition (``auto``: the guest's current
      partition when its pins still hold there, else the best-fitting *whole free* partition, NUMA-
      local to the guest first, then fewest CPUs left over, then name; a named partition may be
      shared by several guests on distinct CPUs); emulator and I/O threads on the housekeeping CPUs
      (the pool outside the partition when the node keeps none); memory from the partition's NUMA
      nodes; no CPU quota.
    - ``shared``: every vCPU floats over the whole pool; emulator and I/O threads over housekeeping
      and pool together (so an emulator thread is never squeezed onto one busy pool CPU, and never
      lands on a partition); shares and quota as asked; memory from the pool's NUMA nodes.
    """
    maximum = guest["vcpus"]["maximum"]
    if request["placement"] == "dedicated":
        part_name, cpus = choose_partition(view, guest, request)
        emulator = view.housekeeping or (view.pool - view.partitions[part_name]["cpus"])
        mems = view.partitions[part_name]["mems"]
        return {
            "mode": "dedicated",
            "partition": part_name,
            "vcpu_pins": [frozenset([cpu]) for cpu in cpus],
            "emulator": emulator,
            "iothreads": emulator,
            "cpu_shares": None,            # irrelevant on CPUs of its own; left as it is
            "vcpu_quota": -1,
            "nodeset": mems or None,
        }
    if not view.pool:
        raise PlacementError("guest '%s': placement shared, but the node's pool is empty" % guest["name"])
    emulator = view.housekeeping | view.pool if view.housekeeping else view.pool
    return {
        "mode": "shared",
        "partition": None,
        "vcpu_pins": [view.pool] * maximum,
        "emulator": emulator,
        "iothreads": emulator,
        "cpu_shares": request.get("cpu_shares"),
        "vcpu_quota": request.get("vcpu_quota"),
        "nodeset": None if view.topology is None else (view.topology.nodes_of(view.pool) or None),
    }


def _effective_nodeset(nodeset, topology):
    """The memory nodes a guest may use: an unset nodeset means every node (None if unknown)."""
    if nodeset:
        return frozenset(nodeset)
    return frozenset(topology.nodes) if topology is not None else None


def plan_guest(view, guest, request):
    """Plan one guest's move; update ``view`` so later guests see the CPUs it takes or frees."""
    name = guest["name"]
    want = desired_state(view, guest, request)
    plan = Plan()
    current_pins = _guest_pins(guest)
    scheduler = guest.get("scheduler") or {}
    numatune = guest.get("numatune") or {}

    def pin_steps():
        for vcpu, (have, need) in enumerate(zip(current_pins, want["vcpu_pins"])):
            if have != need:
                plan.add(PIN_VCPU, "%s/vcpu%d" % (name, vcpu), format_cpulist(have), format_cpulist(need),
                         guest=name, vcpu=vcpu)

    def thread_steps():
        emulator = parse_cpulist(guest.get("emulator_pin", ""))
        if emulator != want["emulator"]:
            plan.add(PIN_EMULATOR, name, format_cpulist(emulator), format_cpulist(want["emulator"]), guest=name)
        for thread_id, cpus in sorted((guest.get("iothread_pins") or {}).items()):
            if parse_cpulist(cpus) != want["iothreads"]:
                plan.add(PIN_IOTHREAD, "%s/iothread%s" % (name, thread_id), cpus,
                         format_cpulist(want["iothreads"]), guest=name, iothread=int(thread_id))

    # Dedicated: move the emulator off the partition before the vCPUs arrive; shared: widen the
    # vCPUs first so the guest never runs squeezed.
    if want["mode"] == "dedicated":
        thread_steps()
        pin_steps()
    else:
        pin_steps()
        thread_steps()

    sched_before, sched_after = {}, {}
    shares = scheduler.get("cpu_shares")
    if want["cpu_shares"] is not None and (shares or DEFAULT_SHARES) != want["cpu_shares"]:
        sched_before["cpu_shares"], sched_after["cpu_shares"] = shares, want["cpu_shares"]
    quota = scheduler.get("vcpu_quota")
    if want["vcpu_quota"] is not None:
        same = (quota_is_unlimited(quota) and quota_is_unlimited(want["vcpu_quota"])) or quota == want["vcpu_quota"]
        if not same:
            sched_before["vcpu_quota"], sched_after["vcpu_quota"] = quota, want["vcpu_quota"]
    if sched_after:
        plan.add(SCHEDULER, name, sched_before, sched_after, guest=name)

    if want["nodeset"] is not None:
        have_nodes = _effective_nodeset(parse_cpulist(numatune.get("nodeset") or ""), view.topology)
        if have_nodes is not None and have_nodes != frozenset(want["nodeset"]):
            plan.add(NUMATUNE, name, format_cpulist(have_nodes), format_cpulist(want["nodeset"]), guest=name,
                     mode=numatune.get("mode") or "strict")

    have_intent = dict((guest.get("hpcvirt") or {}).get("placement", {}))
    intent = {"mode": want["mode"], "partition": want["partition"]}
    if want["mode"] == "shared":
        # Shares and quota not asked for stay as recorded: a re-placement does not forget them.
        for key in ("cpu_shares", "vcpu_quota"):
            intent[key] = want[key] if want[key] is not None else have_intent.get(key)
    want_intent = {k: str(v) for k, v in intent.items() if v is not None}
    if have_intent != want_intent:
        plan.add(METADATA, name, have_intent or None, want_intent, guest=name)

    view.release(name)
    view.occupy(name, frozenset().union(*want["vcpu_pins"]) if want["vcpu_pins"] else frozenset())
    return plan, want


def plan_placements(layout, guests, requests, topology=None, refused=None):
    """Plan every request: lifts (and shared re-tunes) first to free partitions, then drops.

    Returns ``{name: (plan, desired)}`` in application order. Raises ``PlacementError`` before
    anything is planned when a guest is unknown or a request cannot be admitted, unless
    ``refused`` is a dict: then a request that cannot be admitted is recorded there (name ->
    message), left out of the result, and its guest treated as holding no CPUs (the caller
    preempts it).
    """
    view = NodeView(layout, guests, topology)
    normalised = [normalise_request(i, r) for i, r in enumerate(requests)]
    seen = set()
    for index, request in enumerate(normalised):
        if request["name"] in seen:
            raise PlacementError("guests[%d].name: guest '%s' is listed twice" % (index, request["name"]))
        seen.add(request["name"])
        if request["name"] not in view.guests:
            raise PlacementError("guests[%d].name: no guest '%s' on this node" % (index, request["name"]))

    # Every guest being placed gives up the CPUs it holds now: only where it ends up counts. Lifts
    # come first; among drops, guests already on single CPUs of a partition keep their place first.
    def settled(request):
        if view.guests[request["name"]].get("resuming"):  # saved: its old pins hold nothing
            return 1
        pins = _guest_pins(view.guests[request["name"]])
        used = frozenset().union(*pins) if pins else frozenset()
        return 0 if pins and all(len(p) == 1 for p in pins) and view.partition_of(min(used)) else 1

    ordered = ([r for r in normalised if r["placement"] == "shared"]
               + sorted((r for r in normalised if r["placement"] == "dedicated"), key=settled))
    for request in ordered:
        view.release(request["name"])
    results = {}
    for request in ordered:
        guest = view.guests[request["name"]]
        try:
            results[request["name"]] = plan_guest(view, guest, request)
        except PlacementError as exc:
            if refused is None:
                raise
            refused[request["name"]] = str(exc)
            view.release(request["name"])
    return results


# ---------------------------------------------------------------------------------------------
# Applying a guest's plan through libvirt


def sides(dom, affect):
    """(live, config): which definitions of ``dom`` a change with ``affect`` touches."""
    live = affect in ("live", "both") and bool(dom.isActive())
    config = affect in ("config", "both") and bool(dom.isPersistent())
    return live, config


def _target(ctx, step):
    """(dom, live, config, flags) for a guest step; ``ctx`` has libvirt, domains and affect."""
    libvirt = ctx.libvirt
    name = step.detail["guest"]
    dom = ctx.domains.get(name) if ctx.get("domains") else None
    if dom is None:
        dom = ctx.conn.lookupByName(name)
    live, config = sides(dom, ctx.get("affect", "both"))
    flags = (libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0) | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0)
    return dom, live, config, flags


def _cpumap(ctx, text):
    from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import set_to_cpumap
    return set_to_cpumap(parse_cpulist(text), ctx.ncpus)


def _run_pin_vcpu(ctx, step):
    dom, _live, _config, flags = _target(ctx, step)
    if flags:
        dom.pinVcpuFlags(step.detail["vcpu"], _cpumap(ctx, step.after), flags)


def _run_pin_emulator(ctx, step):
    dom, _live, _config, flags = _target(ctx, step)
    if flags:
        dom.pinEmulator(_cpumap(ctx, step.after), flags)


def _run_pin_iothread(ctx, step):
    dom, _live, _config, flags = _target(ctx, step)
    if flags:
        dom.pinIOThread(step.detail["iothread"], _cpumap(ctx, step.after), flags)


def _run_scheduler(ctx, step):
    # setSchedulerParametersFlags refuses LIVE|CONFIG together: one side at a time.
    dom, live, config, _flags = _target(ctx, step)
    if live:
        dom.setSchedulerParametersFlags(dict(step.after), ctx.libvirt.VIR_DOMAIN_AFFECT_LIVE)
    if config:
        dom.setSchedulerParametersFlags(dict(step.after), ctx.libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def _run_numatune(ctx, step):
    """Memory nodes: live only where the guest's NUMA mode allows it (``restrictive``)."""
    libvirt = ctx.libvirt
    dom, live, config, _flags = _target(ctx, step)
    skipped = []
    if live:
        try:
            dom.setNumaParameters({"numa_nodeset": step.after}, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as exc:
            skipped.append("numatune nodeset %s -> %s stays for the next start: %s"
                           % (step.before, step.after, exc.get_error_message()))
    if config:
        dom.setNumaParameters({"numa_mode": libvirt.VIR_DOMAIN_NUMATUNE_MEM_RESTRICTIVE,
                               "numa_nodeset": step.after}, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return {"not_live": skipped} if skipped else None


def _run_metadata(ctx, step):
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import (
        read_domain_metadata,
        write_domain_metadata,
    )
    dom, live, config, flags = _target(ctx, step)
    if flags:
        data = read_domain_metadata(dom, ctx.libvirt.VIR_DOMAIN_AFFECT_CONFIG if config and not live else 0)
        data["placement"] = step.after
        write_domain_metadata(dom, data, flags)


PIN_VCPU = Action("pin_vcpu", _run_pin_vcpu, phase="place")
PIN_EMULATOR = Action("pin_emulator", _run_pin_emulator, phase="place")
PIN_IOTHREAD = Action("pin_iothread", _run_pin_iothread, phase="place")
SCHEDULER = Action("scheduler", _run_scheduler, phase="place")
NUMATUNE = Action("numatune", _run_numatune, phase="place")
METADATA = Action("metadata", _run_metadata, phase="place")
GUEST_ACTIONS = (PIN_VCPU, PIN_EMULATOR, PIN_IOTHREAD, SCHEDULER, NUMATUNE, METADATA)


def guest_outcome(plan, name):
    """(live milliseconds, changes that could not be made live) of one guest's executed steps."""
    steps = [s for s in plan if s.action in GUEST_ACTIONS and s.detail.get("guest") == name]
    spent = sum(s.ms or 0.0 for s in steps)
    not_live = [note for s in steps if s.result for note in s.result.get("not_live", [])]
    return round(spent, 3), not_live


def placed(want):
    """The placement a desired state amounts to, as modules report it."""
    return {"mode": want["mode"], "partition": want["partition"],
            "cpus": format_cpulist(frozenset().union(*want["vcpu_pins"]))}


# ---------------------------------------------------------------------------------------------
# The placement module's whole change


def module_argument_spec():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import libvirt_argument_spec

    spec = libvirt_argument_spec()
    spec.update(
        guests=dict(guests_argument_spec(), required=True),
        affect=dict(type="str", default="both", choices=["both", "live", "config"]),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )
    return spec


def plan_module(node, params):
    """Every guest's plan, in application order, as one plan; and the per-guest results."""
    with node.timings.measure("plan"):
        planned = plan_placements(node.layout, node.guests, requests_from_params(params["guests"]), node.topology)
    whole = Plan()
    results = []
    for name, (plan, want) in planned.items():
        whole.extend(plan)
        results.append({"name": name, "changed": plan.changed, "placement": placed(want),
                        "plan": plan.to_list(), "live_ms": 0.0, "not_live": []})
    return whole, results


def module_result(plan, results, node, diff):
    for result in results:
        result["live_ms"], result["not_live"] = guest_outcome(plan, result["name"])
    apply_ms = sum(r["live_ms"] for r in results)
    timings = node.timings.to_dict()
    if plan and any(s.ms is not None for s in plan):
        timings["apply"] = round(apply_ms, 3)
    return dict(changed=plan.changed, guests=results, plan=plan.to_list(),
                diff=plan.diff("placement") if diff else None, timings=timings)
