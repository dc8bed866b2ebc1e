# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: report_text
short_description: Readable reports of the collection's results - sentences and aligned tables
version_added: 0.1.0
description:
  - The roles' report tasks print these instead of Python or JSON representations; the modules'
    return values stay structured for programs.
  - C(text_table) lays rows (lists or dicts) out as aligned columns, numbers right-aligned, no trailing spaces.
  - C(timings_text) is C(read 22.8 ms, plan 3.5 ms, ... (total 26.3 ms)) from a C({phase - milliseconds}) dict.
  - C(regime_report) (a M(hpcvirt.regime.node_regime) result), C(partition_report) (a
    M(hpcvirt.regime.partition) result), C(vse_report) (the vse role's C(vse_results)),
    C(fleet_report) (a M(hpcvirt.regime.fleet) result), C(evacuate_report_text) and
    C(restore_report_text) (the evacuate role's reports) and C(migration_batch_text) (one batch of
    migrations) turn results into plain sentences with each guest's fate on its own line.
options:
  _input:
    description: The result or rows to render.
    type: raw
    required: true
  host:
    description: The inventory host the result belongs to (for the sentences).
    type: str
"""

EXAMPLES = r"""
- name: Report the change
  ansible.builtin.debug:
    msg: "{{ regime_result | hpcvirt.regime.regime_report(inventory_hostname) }}"
"""

RETURN = r"""
_value:
  description: Text, several lines joined by newlines.
  type: str
"""

from ansible.errors import AnsibleFilterError


def _num(value):
    try:
        return round(float(value), 1)
    except (TypeError, ValueError):
        return None


def ms(value):
    """'12.3 ms' (or '12.3 s' from 10 s on), '-' when unknown."""
    value = _num(value)
    if value is None:
        return "-"
    if value >= 10000:
        return "%.1f s" % (value / 1000.0)
    return "%.1f ms" % value


def _looks_numeric(text):
    for unit in (" ms", " s", " MiB", " GiB"):
        if text.endswith(unit):
            text = text[: -len(unit)]
    try:
        float(text)
        return True
    except ValueError:
        return text == "-"


def text_table(rows, headers=None, numeric=None):
    """Rows (lists or dicts) as aligned columns, a rule under the headers; numbers right-aligned."""
    rows = list(rows or [])
    if rows and isinstance(rows[0], dict):
        headers = list(headers or rows[0])
        rows = [[row.get(h) for h in headers] for row in rows]
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    head = [str(h) for h in headers] if headers else None
    all_rows = ([head] if head else []) + cells
    if not all_rows:
        return ""
    ncols = max(len(r) for r in all_rows)
    width = [max(len(r[i]) if i < len(r) else 0 for r in all_rows) for i in range(ncols)]
    if numeric is None:
        numeric = {i for i in range(ncols) if cells and all(_looks_numeric(r[i]) for r in cells if i < len(r))
                   and any(r[i] != "-" for r in cells if i < len(r))}
    numeric = set(numeric)
    lines = []
    for index, row in enumerate(all_rows):
        is_head = head is not None and index == 0
        parts = [value.rjust(width[i]) if i in numeric else value.ljust(width[i])
                 for i, value in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if is_head:
            lines.append("  ".join("-" * w for w in width))
    return "\n".join(lines)


def timings_text(timings):
    """{'read': 22.78, 'plan': 3.5} -> 'read 22.8 ms, plan 3.5 ms (total 26.3 ms)'."""
    if not isinstance(timings, dict) or not timings:
        return "no timings"
    values = [(str(k), _num(v)) for k, v in timings.items()]
    total = sum(value for dummy, value in values if value is not None)
    return "%s (total %s)" % (", ".join("%s %s" % (k, ms(v)) for k, v in values), ms(total))


def _indent(text, prefix="  "):
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def _fate_line(guest):
    name = guest.get("name")
    fate = guest.get("fate")
    if fate in ("placed", "resumed"):
        place = guest.get("placement") or {}
        where = place.get("mode", "?")
        if place.get("partition"):
            where += " on partition %s" % place["partition"]
        if place.get("cpus"):
            where += ", CPUs %s" % place["cpus"]
        text = "%s: %s, %s, live changes %s" % (name, "resumed and placed" if fate == "resumed" else "placed",
                                                where, ms(guest.get("live_ms")))
        if guest.get("not_live"):
            text += "; at its next start: %s" % ", ".join(str(x) for x in guest["not_live"])
        return text
    if fate == "preempted":
        return "%s: preempted (saved to disk)%s" % (name, ": %s" % guest["reason"] if guest.get("reason") else "")
    return "%s: %s%s" % (name, fate or "untouched", ": %s" % guest["reason"] if guest.get("reason") else "")


def regime_report(result, host="", slurm_told=False):
    """A node_regime result as sentences: outcome, timings, one line per guest's fate."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("regime_report: expects a node_regime result")
    steps = len(result.get("plan") or [])
    outcome = "changed" if result.get("changed") else "nothing to change"
    lines = ["%s is %s: %s, %d step%s." % (host or "The node", result.get("regime"), outcome, steps,
                                           "" if steps == 1 else "s")]
    lines.append("Timings: %s." % timings_text(result.get("timings")))
    interrupted = result.get("interrupted_run")
    if interrupted:
        lines.append("An earlier run was interrupted (target %s, %s steps done); this run converged from it."
                     % (interrupted.get("target", interrupted.get("regime", "?")), interrupted.get("done", "?")))
    guests = result.get("guests") or []
    if guests:
        lines.append("Guests:")
        lines.extend("  " + _fate_line(g) for g in guests)
    else:
        lines.append("No guests on the node.")
    if result.get("reboot_required"):
        lines.append("Reboot needed for kernel arguments: %s." % " ".join(result.get("kernel_args_required") or []))
    if slurm_told:
        lines.append("Slurm: drained before, switched and resumed after.")
    return "\n".join(lines)


def partition_report(result, host=""):
    """A partition result: the layout reached, per partition its exclusivity, timings."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("partition_report: expects a partition result")
    layout = result.get("layout") or {}
    lines = ["%s: layout %s; housekeeping %s, pool %s." % (
        host or "The node", "changed" if result.get("changed") else "unchanged",
        layout.get("housekeeping") or "none", layout.get("pool") or "none")]
    exclusivity = result.get("exclusivity") or {}
    rows = []
    for part in layout.get("partitions") or []:
        excl = exclusivity.get(part.get("name")) or {}
        blockers = excl.get("blockers") or []
        rows.append([part.get("name"), part.get("cpus"), part.get("mems", "-"),
                     "yes" if excl.get("enforced") else "no",
                     ("; ".join(str(b) for b in blockers) if isinstance(blockers, list) else str(blockers)) or "-"])
    if rows:
        lines.append(_indent(text_table(rows, headers=["partition", "CPUs", "mems", "kernel-exclusive", "why not"],
                                        numeric=())))
    else:
        lines.append("No partitions.")
    lines.append("Timings: %s." % timings_text(result.get("timings")))
    if result.get("reboot_required"):
        lines.append("Reboot needed: add %s to the kernel command line (hpcvirt never edits the boot loader)."
                     % " ".join(result.get("kernel_args_required") or []))
    return "\n".join(lines)


def vse_report(results, host=""):
    """The vse role's loop results: one line per instance (result, state, placement, addresses, time)."""
    items = results.get("results", []) if isinstance(results, dict) else results
    rows = []
    for item in items or []:
        if not isinstance(item, dict) or item.get("skipped"):
            continue
        name = (item.get("item") or {}).get("name", item.get("name"))
        if item.get("failed"):
            rows.append([name, "failed", "-", "-", "-", item.get("msg", "")])
            continue
        placement = ((item.get("resolved") or {}).get("metadata") or {}).get("placement") or {}
        where = placement.get("mode", "-")
        if placement.get("partition"):
            where += " on %s" % placement["partition"]
        addresses = " ".join("%s=%s" % kv for kv in sorted((item.get("addresses") or {}).items())) or "-"
        total = sum(float(v) for v in (item.get("timings") or {}).values() if isinstance(v, (int, float)))
        note = "restart needed: %s" % ", ".join(str(x) for x in item["restart_fields"]) \
            if item.get("restart_required") and item.get("restart_fields") else ""
        rows.append([name, "changed" if item.get("changed") else "unchanged", item.get("domain_state") or "-",
                     where, addresses, ms(total) + ("; " + note if note else "")])
    if not rows:
        return "%s: no VSE instances." % (host or "The node")
    table = text_table(rows, headers=["instance", "result", "state", "placement", "addresses", "time"], numeric=())
    return "%s: %d VSE instance%s.\n%s" % (host or "The node", len(rows), "" if len(rows) == 1 else "s", _indent(table))


def fleet_report(result, host="", members=20):
    """A fleet result: counts, timings, and the first members, one a line."""
    if not isinstance(result, dict):
        raise AnsibleFilterError("fleet_report: expects a fleet result")
    name = (result.get("item") or {}).get("name", result.get("name", "fleet"))
    counts = result.get("counts") or {}
    words = {"create": "created", "update": "updated", "keep": "kept", "remove": "removed", "start": "started"}
    lines = ["%sfleet %s: %s." % ("%s: " % host if host else "", name,
                                  ", ".join("%s %s" % (counts[k], words[k]) for k in words if k in counts)
                                  or "no members")]
    lines.append("Timings: %s." % timings_text(result.get("timings")))
    recovered = result.get("recovered") or {}
    if recovered.get("action"):
        lines.append("An interrupted run was %s." % str(recovered["action"]).replace("_", " "))
    rows = []
    for member in (result.get("members") or [])[: int(members)]:
        addresses = member.get("addresses") or {}
        rows.append([member.get("name"), member.get("action"), member.get("state"), member.get("hostname") or "-",
                     " ".join("%s=%s" % kv for kv in sorted(addresses.items())) or "-"])
    if rows:
        lines.append(_indent(text_table(rows, headers=["member", "action", "state", "hostname", "addresses"],
                                        numeric=())))
        more = len(result.get("members") or []) - len(rows)
        if more > 0:
            lines.append("  ... and %d more." % more)
    if result.get("restart_required"):
        lines.append("At their next start: %s." % ", ".join(result["restart_required"]))
    return "\n".join(lines)


def _migration_line(move):
    text = "%s: %s -> %s" % (move.get("name"), move.get("from"), move.get("to"))
    if move.get("ok", True):
        text += ", migrated"
        if move.get("downtime_ms") is not None:
            text += " (downtime %s)" % ms(move["downtime_ms"])
    else:
        text += ", FAILED (%s); the guest is on the %s" % (move.get("msg") or "no message", move.get("guest_on", "?"))
    return text


def migration_batch_text(batch, done, total, elapsed_s, number=None, batches=None):
    """One batch's progress: 'batch 2 of 5: 3 migrated, 0 failed; 8 of 20 done, 45.2 s elapsed'."""
    batch = [m for m in batch or [] if isinstance(m, dict)]
    failed = sum(1 for m in batch if not m.get("ok", True))
    head = "Batch %s of %s" % (number, batches) if number else "Batch"
    lines = ["%s: %d migrated, %d failed; %d of %d migrations done, %.1f s elapsed." % (
        head, len(batch) - failed, failed, int(done), int(total), float(elapsed_s))]
    lines.extend("  " + _migration_line(m) for m in batch)
    return "\n".join(lines)


def evacuate_report_text(report, host=""):
    """The evacuate role's evacuate_report: one line per guest."""
    report = report or {}
    lines = []
    for name, dest in sorted((report.get("migrated") or {}).items()):
        lines.append("  %s: migrated to %s" % (name, dest))
    for name in report.get("preempted") or []:
        lines.append("  %s: preempted (saved to disk)" % name)
    for move in report.get("failed") or []:
        lines.append("  " + _migration_line(move))
    for name in report.get("stayed") or []:
        lines.append("  %s: stays on the node" % name)
    head = "%s: %d migrated, %d preempted, %d failed, %d stay." % (
        host or "The node", len(report.get("migrated") or {}), len(report.get("preempted") or []),
        len(report.get("failed") or []), len(report.get("stayed") or []))
    return "\n".join([head] + lines) if lines else head + " Nothing to evacuate."


def restore_report_text(report, host=""):
    """The evacuate role's evacuate_restore_report: one line per guest."""
    report = report or {}
    lines = ["  %s: migrated home" % n for n in report.get("migrated_home") or []]
    lines += ["  %s: resumed from disk" % n for n in report.get("resumed") or []]
    lines += ["  " + _migration_line(m) for m in report.get("failed") or []]
    head = "%s: %d migrated home, %d resumed, %d failed." % (
        host or "The node", len(report.get("migrated_home") or []), len(report.get("resumed") or []),
        len(report.get("failed") or []))
    return "\n".join([head] + lines) if lines else head + " Nothing to bring home."


class FilterModule:
    def filters(self):
        return {
            "text_table": text_table,
            "timings_text": timings_text,
            "regime_report": regime_report,
            "partition_report": partition_report,
            "vse_report": vse_report,
            "fleet_report": fleet_report,
            "migration_batch_text": migration_batch_text,
            "evacuate_report_text": evacuate_report_text,
            "restore_report_text": restore_report_text,
        }
