# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Slurm nodes as ``scontrol`` shows them, and the changes the slurm_node module makes.

``scontrol show node -o`` prints one line per node of ``Key=value`` pairs separated by spaces. The
values are not quoted: ``OS=`` holds spaces, and ``Reason=`` is the last field and runs to the end
of the line (it may hold spaces and ``=``, and Slurm appends ``[user@time]``). States are a base
state with ``+FLAG`` suffixes and a ``*`` when the node does not respond (``IDLE+DRAIN``,
``MIXED+DRAIN``, ``DOWN*+DRAIN``). sinfo's DRAINED / DRAINING are derived: drained when no job
runs any more, draining while jobs still run.

The pure functions here are unit-tested against recorded lines; ``Scontrol`` runs the command
through a caller-supplied ``run(argv) -> (rc, stdout, stderr)`` (the module's ``run_command``),
with argument lists and never a shell.

``plan_node`` makes a plan of typed steps (``DRAIN``, ``REASON``, ``FEATURES``, ``RESUME``) that
``_plan.execute`` carries out with a context holding the ``Scontrol``; ``converge`` is the whole
module: read the node, plan, refuse what must not happen, execute, wait, read it again.
"""

from __future__ import annotations

import re
import time

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, StepFailed, Timings, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import to_int as _int

# A field starts where a space is followed by a capitalised word and "=".
_FIELD_START = re.compile(r"(?:^|(?<=\s))([A-Z][A-Za-z0-9_]*)=")
_REASON_SUFFIX = re.compile(r"^(?P<text>.*?)\s*\[(?P<user>[^@\]\s]+)@(?P<time>[^\]]+)\]\s*$")
NULL_VALUES = ("(null)", "")
BUSY_STATES = ("ALLOCATED", "MIXED", "COMPLETING")


class SlurmError(HpcvirtError):
    """scontrol failed; ``kind`` says how (for tests and messages, returned as ``error``)."""

    kind = "scontrol"

    def __init__(self, msg, **details):
        details.setdefault("error", self.kind)
        super().__init__(msg, **details)


class SlurmRequestError(SlurmError):
    """What the module was asked would be wrong on this node (nothing was changed)."""

    kind = "request"


class ScontrolMissing(SlurmError):
    kind = "scontrol_missing"


class ControllerUnreachable(SlurmError):
    kind = "controller_unreachable"


class UnknownNode(SlurmError):
    kind = "unknown_node"


def split_fields(line):
    """``Key=value`` pairs of one ``scontrol show node -o`` line, in order, values unparsed."""
    line = line.rstrip("\n")
    reason = None
    at = line.find(" Reason=")
    if line.startswith("Reason="):
        at = -1
        reason, line = line[len("Reason="):], ""
    elif at >= 0:
        reason, line = line[at + len(" Reason="):], line[:at]
    starts = list(_FIELD_START.finditer(line))
    fields = {}
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(line)
        fields[match.group(1)] = line[match.end():end].strip()
    if reason is not None:
        fields["Reason"] = reason.strip()
    return fields


def parse_features(value):
    """A feature list (``a,b``; ``(null)`` or empty is none), in Slurm's order."""
    if value is None or value.strip() in NULL_VALUES:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_reason(value):
    """(text, user, time) of a Reason; Slurm appends ``[user@time]`` to what was set."""
    if value is None or value.strip() in NULL_VALUES + ("none",):
        return None, None, None
    match = _REASON_SUFFIX.match(value)
    if match:
        return match.group("text"), match.group("user"), match.group("time")
    return value.strip(), None, None


def parse_state(value):
    """The parts of a node state string such as ``DOWN*+DRAIN`` or ``MIXED+DRAIN+COMPLETING``.

    ``summary`` is what sinfo would call it: ``drained`` (drain flag, no job left), ``draining``
    (drain flag, jobs still running), ``down``, ``unknown``, or the base state in lower case.
    """
    parts = [part for part in (value or "UNKNOWN").strip().upper().split("+") if part]
    responding = True
    cleaned = []
    for part in parts:
        if part.endswith("*"):  # not responding (or, on some versions, a flag marked so)
            responding = False
            part = part.rstrip("*")
        if part.endswith("~") or part.endswith("#") or part.endswith("%"):  # sinfo power suffixes
            part = part[:-1]
        cleaned.append(part)
    base, flags = cleaned[0], cleaned[1:]
    if "NOT_RESPONDING" in flags:  # how scontrol spells the "*" in some transitions
        responding = False
    if base in ("DRAINED", "DRAINING"):  # older scontrol prints the derived state as the base
        flags = ["DRAIN"] + flags
        base = "IDLE" if base == "DRAINED" else "ALLOCATED"
    drain = "DRAIN" in flags
    busy = base in BUSY_STATES or "COMPLETING" in flags
    if drain:
        summary = "draining" if busy else "drained"
    elif base == "DOWN" or "FAIL" in flags:
        summary = "down"
    else:
        summary = base.lower()
    return {
        "base": base,
        "flags": flags,
        "responding": responding,
        "drain": drain,
        "busy": busy,
        "summary": summary,
    }


def node_from_fields(fields):
    """The facts the module works with, from the fields of one node line."""
    state = parse_state(fields.get("State"))
    reason, reason_user, reason_time = parse_reason(fields.get("Reason"))
    return {
        "name": fields.get("NodeName"),
        "state": fields.get("State"),
        "base_state": state["base"],
        "state_flags": state["flags"],
        "summary": state["summary"],
        "responding": state["responding"],
        "drain": state["drain"],
        "busy": state["busy"],
        "reason": reason,
        "reason_user": reason_user,
        "reason_time": reason_time,
        "available_features": parse_features(fields.get("AvailableFeatures", fields.get("Features"))),
        "active_features": parse_features(fields.get("ActiveFeatures")),
        "cpus_allocated": _int(fields.get("CPUAlloc")),
        "cpus_total": _int(fields.get("CPUTot")),
        "partitions": parse_features(fields.get("Partitions")),
    }


def parse_nodes(text):
    """Every node of ``scontrol show node -o`` output, keyed by name."""
    nodes = {}
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        node = node_from_fields(split_fields(line))
        nodes[node["name"]] = node
    return nodes


def classify_failure(rc, stdout, stderr, node=None):
    """The right exception for a failed scontrol call, from what it printed."""
    text = " ".join(part.strip() for part in (stderr, stdout) if part and part.strip())
    lowered = text.lower()
    if "unable to contact slurm controller" in lowered or "connection refused" in lowered \
            or "zero bytes were transmitted" in lowered or "socket timed out" in lowered:
        return ControllerUnreachable("cannot reach slurmctld: %s" % text)
    if "not found" in lowered and "node" in lowered or "invalid node name" in lowered:
        return UnknownNode("Slurm has no node named '%s': %s" % (node, text))
    return SlurmError("scontrol failed (rc=%s): %s" % (rc, text or "no output"))


class Scontrol:
    """scontrol through ``run(argv) -> (rc, stdout, stderr)``."""

    def __init__(self, run, binary="scontrol"):
        self.run = run
        self.binary = binary

    def _call(self, args, node):
        rc, out, err = self.run([self.binary] + list(args))
        if rc != 0:
            raise classify_failure(rc, out, err, node)
        return out

    def show_node(self, name):
        out = self._call(["show", "node", "-o", name], name)
        nodes = parse_nodes(out)
        if name not in nodes:
            raise UnknownNode("Slurm has no node named '%s' (scontrol printed: %s)" % (name, out.strip() or "nothing"))
        return nodes[name]

    def update(self, name, **settings):
        """``scontrol update nodename=NAME key=value ...``; each value is one argument, no shell."""
        args = ["update", "nodename=%s" % name]
        args += ["%s=%s" % (key, value) for key, value in settings.items()]
        self._call(args, name)

    def wait_idle(self, name, timeout, interval=1.0, clock=time.monotonic, sleep=time.sleep):
        """Wait until no job runs on the node; returns the node; raises SlurmError on timeout."""
        deadline = clock() + timeout
        while True:
            node = self.show_node(name)
            if not node["busy"]:
                return node
            if clock() >= deadline:
                raise SlurmError(
                    "node '%s' still runs jobs after %s s (state %s, %s CPUs allocated); it stays drained"
                    % (name, timeout, node["state"], node["cpus_allocated"]))
            sleep(interval)


def same_features(current, desired):
    return sorted(set(current)) == sorted(set(desired))


def scoped_features(current, wanted, managed=None):
    """The feature list to ask for: ``wanted`` exactly, or, with ``managed``, the features of
    ``current`` outside ``managed`` kept (in their order) and ``wanted`` added."""
    if wanted is None:
        return None
    if managed is None:
        return list(dict.fromkeys(wanted))
    kept = [feature for feature in current if feature not in managed and feature not in wanted]
    return kept + list(dict.fromkeys(wanted))


def _run_drain(ctx, step):
    """Drain the node (or change the reason of a drained one): one ``scontrol update``."""
    ctx.scontrol.update(step.target, state="drain", reason=step.detail["reason"])


def _run_features(ctx, step):
    """Both feature lists in one update: Slurm checks after each update that the active
    features are a subset of the available ones."""
    ctx.scontrol.update(step.target, **{key.replace("_", ""): value for key, value in sorted(step.after.items())})


def _run_resume(ctx, step):
    ctx.scontrol.update(step.target, state="resume")


DRAIN = Action("drain", _run_drain, phase="drain")
REASON = Action("reason", _run_drain, phase="drain")
FEATURES = Action("features", _run_features, phase="features")
RESUME = Action("resume", _run_resume, phase="resume")


def plan_node(node, state=None, reason=None, available_features=None, active_features=None, managed=None):
    """Steps that take ``node`` (as parsed) to the desired drain state, reason and features.

    Draining comes first and resuming last, so the node never takes a job with features that are
    about to change. The feature lists that differ are one ``FEATURES`` step (before/after: the
    lists, comma-separated, keyed ``available_features`` / ``active_features``).
    """
    name = node["name"]
    available_features = scoped_features(node["available_features"], available_features, managed)
    active_features = scoped_features(node["active_features"], active_features, managed)
    plan = Plan()
    if state == "drained":
        if not node["drain"]:
            plan.add(DRAIN, name, node["summary"], "drain", reason=reason)
        elif node["reason"] != reason:
            plan.add(REASON, name, node["reason"], reason, reason=reason)
    before, after = {}, {}
    for key, wanted in (("available_features", available_features), ("active_features", active_features)):
        if wanted is not None and not same_features(node[key], wanted):
            before[key], after[key] = ",".join(node[key]), ",".join(wanted)
    if after:
        plan.add(FEATURES, name, before, after)
    if state == "resumed" and (node["drain"] or node["base_state"] == "DOWN"):
        plan.add(RESUME, name, node["summary"], "resume")
    return plan


def check_plan(node, plan):
    """Refuse what must not happen: resuming a node Slurm cannot vouch for, impossible features."""
    if plan.of(RESUME) and (not node["responding"] or node["base_state"] == "UNKNOWN"):
        raise SlurmRequestError(
            "state: refusing to resume node '%s': its state is %s (%s); Slurm does not know whether it is "
            "healthy" % (node["name"], node["state"], "not responding" if not node["responding"] else "unknown"),
            node=node)
    for step in plan.of(FEATURES):
        if "active_features" not in step.after:
            continue
        available = step.after.get("available_features")
        available = available.split(",") if available is not None else node["available_features"]
        missing = sorted(set(step.after["active_features"].split(",")) - set(available) - {""})
        if missing:
            raise SlurmRequestError("active_features: %s not among the available features of node '%s' (%s)"
                                    % (", ".join(missing), node["name"], ", ".join(available) or "none"), node=node)


def features_slurm_kept(plan, node):
    """Active features Slurm kept although the plan asked them away."""
    for step in plan.of(FEATURES):
        if "active_features" in step.after:
            return sorted(set(node["active_features"]) - set(filter(None, step.after["active_features"].split(","))))
    return []


def converge(scontrol, params, check_mode=False, warn=None):
    """The slurm_node module: the result (``changed``, ``before``, ``node``, ``plan``, ``diff``, ...)."""
    name = params["name"]
    if params.get("reason") is not None and not params["reason"].strip():
        raise SlurmRequestError("reason: must not be empty; Slurm requires a reason to drain a node")
    if params.get("timeout", 0) < 0:
        raise SlurmRequestError("timeout: must be 0 or more seconds, got %d" % params["timeout"])
    timings = Timings()
    try:
        with timings.measure("read"):
            before = scontrol.show_node(name)
    except UnknownNode as exc:
        raise UnknownNode("name: %s" % exc)
    reason = params["reason"].strip() if params.get("state") == "drained" else None
    plan = plan_node(before, params.get("state"), reason, params.get("available_features"),
                     params.get("active_features"), params.get("managed_features"))
    check_plan(before, plan)
    result = dict(changed=plan.changed, before=before, node=before, plan=plan.to_list(), waited=False,
                  diff=plan.diff(header="slurm node %s" % name), timings=timings.ms)
    try:
        execute(plan, Context(scontrol=scontrol), check_mode, timings)
    except StepFailed as exc:
        exc.error.details.update(before=before, timings=timings.to_dict())
        raise
    if check_mode:
        return result
    result["plan"] = plan.to_list()
    try:
        if params.get("state") == "drained" and params.get("wait"):
            result["waited"] = True
            with timings.measure("wait"):
                scontrol.wait_idle(name, params["timeout"])
        with timings.measure("read"):
            result["node"] = scontrol.show_node(name)
    except SlurmError as exc:
        exc.details.update({k: v for k, v in result.items() if k != "diff"})
        raise
    kept = features_slurm_kept(plan, result["node"])
    if kept and warn is not None:
        warn("Slurm kept active features %s on node '%s' (its node_features plugin keeps features it does not "
             "manage); use managed_features to leave such features alone" % (", ".join(kept), name))
    return result
