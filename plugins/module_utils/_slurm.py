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
"""

from __future__ import annotations

import re
import time

from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan

# A field starts where a space is followed by a capitalised word and "=".
_FIELD_START = re.compile(r"(?:^|(?<=\s))([A-Z][A-Za-z0-9_]*)=")
_REASON_SUFFIX = re.compile(r"^(?P<text>.*?)\s*\[(?P<user>[^@\]\s]+)@(?P<time>[^\]]+)\]\s*$")
NULL_VALUES = ("(null)", "")
BUSY_STATES = ("ALLOCATED", "MIXED", "COMPLETING")


class SlurmError(Exception):
    """scontrol failed; ``kind`` says how (for tests and messages)."""

    kind = "scontrol"


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


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


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


def plan_node(node, state=None, reason=None, available_features=None, active_features=None, managed=None):
    """Steps that take ``node`` (as parsed) to the desired drain state, reason and features.

    Draining comes first and resuming last, so the node never takes a job with features that are
    about to change.
    """
    name = node["name"]
    available_features = scoped_features(node["available_features"], available_features, managed)
    active_features = scoped_features(node["active_features"], active_features, managed)
    drain, features, resume = Plan(), Plan(), Plan()
    if state == "drained":
        if not node["drain"]:
            drain.add("drain", name, node["summary"], "drain", reason=reason)
        elif node["reason"] != reason:
            drain.add("reason", name, node["reason"], reason)
    elif state == "resumed" and (node["drain"] or node["base_state"] == "DOWN"):
        resume.add("resume", name, node["summary"], "resume")
    if available_features is not None and not same_features(node["available_features"], available_features):
        features.add("available_features", name, ",".join(node["available_features"]), ",".join(available_features))
    if active_features is not None and not same_features(node["active_features"], active_features):
        features.add("active_features", name, ",".join(node["active_features"]), ",".join(active_features))
    plan = Plan()
    plan.extend(drain)
    plan.extend(features)
    plan.extend(resume)
    return plan


def apply_plan(scontrol, plan, timings):
    """Run the planned steps in order; feature steps go in one update, as Slurm checks that the
    active features are a subset of the available ones after each update."""
    steps = list(plan)
    index = 0
    while index < len(steps):
        step = steps[index]
        if step.action in ("drain", "reason"):
            reason = step.detail.get("reason") if step.action == "drain" else step.after
            with timings.measure("drain"):
                scontrol.update(step.target, state="drain", reason=reason)
        elif step.action == "resume":
            with timings.measure("resume"):
                scontrol.update(step.target, state="resume")
        elif step.action in ("available_features", "active_features"):
            settings = {}
            while index < len(steps) and steps[index].action in ("available_features", "active_features"):
                settings[steps[index].action.name.replace("_", "")] = steps[index].after
                index += 1
            with timings.measure("features"):
                scontrol.update(step.target, **settings)
            continue
        else:
            raise ValueError("unknown step %s" % step.action)
        index += 1
