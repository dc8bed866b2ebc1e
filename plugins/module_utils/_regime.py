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

import datetime
import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import plan_placements
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    JOURNAL_DIR,
    REGIME_FILE,
    read_json,
    remove_state,
    write_json_atomic,
)

PREEMPTED_BY = "node_regime"


class RegimeError(ValueError):
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


def record_changes(root, regime, layout_record):
    """The regime file step's before and after, or None when the node already records it."""
    before = read_json(root, REGIME_FILE)
    want = regime_record(regime, layout_record)
    have = {k: v for k, v in (before or {}).items() if k != "changed_at"}
    if have == want:
        return None
    return before, want


def write_regime(root, record):
    data = dict(record)
    data["changed_at"] = now_iso()
    write_json_atomic(root, REGIME_FILE, data)


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


class Journal:
    """What a regime change set out to do and how far it got, on the node, written atomically.

    Written before the first change and after every step; removed when the change completes.
    A journal found at the start of a run means the previous run was interrupted.
    """

    def __init__(self, root="/", name="node_regime"):
        self.root = root
        self.relpath = os.path.join(JOURNAL_DIR, name + ".json")
        self.data = None

    @property
    def path(self):
        return os.path.join(self.root, self.relpath)

    def previous(self):
        try:
            return read_json(self.root, self.relpath)
        except ValueError:
            # A journal cut short by a crash is still proof of an interrupted run.
            return {"target": None, "done": None, "unreadable": True}

    def begin(self, regime, steps):
        self.data = {"target": regime, "started_at": now_iso(), "pid": os.getpid(),
                     "steps": steps, "done": 0}
        write_json_atomic(self.root, self.relpath, self.data, mode=0o600)

    def step_done(self, count):
        self.data["done"] = count
        write_json_atomic(self.root, self.relpath, self.data, mode=0o600)

    def finish(self):
        remove_state(self.root, self.relpath)
