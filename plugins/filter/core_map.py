# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: core_map
short_description: The core map of a node group, as data, as an HTML page and as text
version_added: 0.1.0
description:
  - C(core_map) turns M(hpcvirt.regime.node_info) results (with O(hpcvirt.regime.node_info#module:include_cpus=true))
    of a node group into one model - every node's CPUs by socket, NUMA node and core (SMT siblings
    together), each CPU's role (housekeeping, a partition, the pool), the guests on them, hugepages
    per NUMA node, the regime, the last transition and each guest's largest heartbeat gap or detour
    where known, and a summary (nodes per regime, partitions free and used, guests per placement).
  - C(core_map_html) renders that model as one self-contained HTML page (no scripts, no external
    assets; a Content-Security-Policy forbids any fetch). Every value is escaped.
  - C(core_map_text) renders it as text for a terminal or an AWX job log - one line per node, CPUs as
    symbols by role - with a legend and, per node, an aligned table of its guests.
options:
  _input:
    description: C({inventory host - node_info result}) for the node group (C(core_map)); the model C(core_map) returned (the others).
    type: dict
    required: true
  extras:
    description:
      - For C(core_map), per inventory host what is known beyond the node itself - C(transition) (a
        M(hpcvirt.regime.node_regime) result), C(heartbeats) (C({guest - {max_gap_ms}})), C(migrations)
        (the evacuate role's C(evacuate_migrations) entries) and C(detours) (C({guest - text})).
    type: dict
    default: {}
  title:
    description: Page title, for C(core_map_html).
    type: str
    default: hpcvirt core map
"""

EXAMPLES = r"""
- name: Build the model once for the play's hosts
  ansible.builtin.set_fact:
    report_model: >-
      {{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, 'node')))
         | hpcvirt.regime.core_map }}
  run_once: true

- name: Print the map
  ansible.builtin.debug:
    msg: "{{ report_model | hpcvirt.regime.core_map_text }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: The model (C(core_map)), the HTML page (C(core_map_html)) or the text (C(core_map_text)).
  type: raw
"""

import datetime
import html

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.filter.report_text import _num, ms, text_table
from ansible_collections.hpcvirt.regime.plugins.module_utils import _cpuset

ROLES = ("housekeeping", "pool", "partition", "unassigned")
# Fixed colours (never taken from input): roles, then partitions by their order on the page.
ROLE_COLOURS = {"housekeeping": "#9aa3ad", "pool": "#8ecae6", "unassigned": "#ffffff", "housekeeping+pool": "#b8d4e0"}
PARTITION_COLOURS = ("#e76f51", "#2a9d8f", "#e9c46a", "#9b5de5", "#f15bb5", "#43aa8b",
                     "#fb8500", "#577590", "#c9184a", "#8ac926", "#6a4c93", "#ff595e")
# Text symbols: partitions get letters A, B, ... (upper case where a dedicated guest runs, lower case free).
TEXT_SYMBOLS = {"housekeeping": "h", "pool": ".", "housekeeping+pool": ":", "unassigned": "-"}
PARTITION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PLACEMENTS = ("dedicated", "shared", "custom")
SHORT_ROLES = {"housekeeping": "hk", "housekeeping+pool": "hk+pool"}


def parse_cpulist(text):
    """'0-3,8' -> [0, 1, 2, 3, 8]; '' -> []. Raises ValueError (CpuListError) on anything else."""
    return sorted(_cpuset.parse_cpulist(str(text or "")))


def format_cpulist(cpus):
    return _cpuset.format_cpulist(cpus)


def _cpu_table(topology):
    """Per online CPU: id, socket, NUMA node, core. From topology.cpus, or NUMA nodes when omitted."""
    cpus = topology.get("cpus")
    if cpus:
        return [{"id": int(c["id"]), "socket": int(c.get("socket", 0)), "node": int(c.get("node", 0)),
                 "core": int(c.get("core", c["id"]))} for c in cpus]
    table = []
    for numa in topology.get("numa_nodes") or []:
        for cpu in parse_cpulist(numa.get("cpus")):
            table.append({"id": cpu, "socket": 0, "node": int(numa.get("id", 0)), "core": cpu})
    if not table:
        table = [{"id": cpu, "socket": 0, "node": 0, "core": cpu} for cpu in parse_cpulist(topology.get("online"))]
    return sorted(table, key=lambda c: c["id"])


def _transition(result):
    if not isinstance(result, dict) or "regime" not in result:
        return None
    raw = {str(k): v for k, v in (result.get("timings") or {}).items()}
    timings = {k: _num(v) for k, v in raw.items()}
    return {
        "regime": str(result.get("regime")),
        "changed": bool(result.get("changed")),
        "steps": len(result.get("plan") or []),
        "timings_ms": timings,
        "total_ms": round(sum(float(v) for k, v in raw.items() if timings[k] is not None), 1),
        "fates": {str(g.get("name")): {"fate": g.get("fate"), "live_ms": _num(g.get("live_ms"))}
                  for g in result.get("guests") or [] if isinstance(g, dict)},
        "reboot_required": bool(result.get("reboot_required")),
    }


def _detour(dom, hostname, host, extras):
    """What took the guest away from where it lived, where it is known."""
    given = (extras.get("detours") or {}).get(dom["name"])
    if given:
        return str(given)
    parts = []
    for move in extras.get("migrations") or []:
        if isinstance(move, dict) and move.get("name") == dom["name"]:
            where = "to %s" % move.get("to") if move.get("from") == host else "from %s" % move.get("from")
            text = "migrated %s" % where if move.get("ok", True) else "migration %s failed" % where
            if move.get("downtime_ms") is not None:
                text += " (downtime %s)" % ms(move["downtime_ms"])
            parts.append(text)
    fate = extras.get("fate")
    if fate == "resumed":
        parts.append("saved to disk and resumed by the last change")
    elif fate == "preempted":
        parts.append("preempted by the last change, saved to disk")
    meta = dom.get("hpcvirt") or {}
    home = (meta.get("migration") or {}).get("home_host")
    if home and home != hostname:
        parts.append("away from home %s" % home)
    if (meta.get("checkpoint") or {}).get("state") == "preempted" and not dom.get("active") and fate != "preempted":
        parts.append("preempted, saved to disk")
    return "; ".join(parts) or None


def _node_model(host, info, extras, letters):
    topology = info.get("topology") or {}
    layout = info.get("layout") or {}
    housekeeping = set(parse_cpulist(layout.get("housekeeping")))
    pool = set(parse_cpulist(layout.get("pool")))
    part_of = {}
    partitions = []
    for part in layout.get("partitions") or []:
        cpus = parse_cpulist(part.get("cpus"))
        for cpu in cpus:
            part_of[cpu] = part["name"]
        partitions.append({"name": str(part["name"]), "cpus": format_cpulist(cpus), "cpu_count": len(cpus),
                           "mems": str(part.get("mems", "")), "state": str(part.get("partition_state", "")),
                           "letter": letters.get(part["name"], "?"), "used_by": []})

    heartbeats = extras.get("heartbeats") or {}
    transition = _transition(extras.get("transition"))
    on_cpu = {}
    guests = []
    for dom in info.get("domains") or []:
        placement = dom.get("placement") or {}
        mode = placement.get("observed") or "custom"
        pins = {int(v): parse_cpulist(p) for v, p in (dom.get("vcpu_pins") or {}).items()}
        held = sorted(set(cpu for p in pins.values() for cpu in p))
        if mode != "shared" and all(len(p) == 1 for p in pins.values()):
            for vcpu, pin in sorted(pins.items()):
                on_cpu.setdefault(pin[0], []).append({"name": dom["name"], "vcpu": vcpu,
                                                      "running": bool(dom.get("active"))})
        if mode == "dedicated" and placement.get("partition"):
            for part in partitions:
                if part["name"] == placement["partition"]:
                    part["used_by"].append(dom["name"])
        beat = heartbeats.get(dom["name"]) or {}
        fate = (transition or {}).get("fates", {}).get(dom["name"]) or {}
        vcpus = dom.get("vcpus") or {}
        guests.append({
            "name": str(dom["name"]),
            "state": str(dom.get("state", "unknown")),
            "running": bool(dom.get("active", dom.get("state") == "running")),
            "placement": mode,
            "partition": placement.get("partition"),
            "intent": placement.get("intent"),
            "cpus": format_cpulist(held),
            "vcpus": int(vcpus.get("current", len(pins)) or 0),
            "memory_mib": int(dom.get("memory_kb", 0) or 0) // 1024,
            "hugepages": bool((dom.get("memory_backing") or {}).get("hugepages")),
            "max_gap_ms": _num(beat.get("max_gap_ms")),
            "detour": _detour(dom, info.get("hostname"), host, dict(extras, fate=fate.get("fate"))),
            "fate": fate.get("fate"),
            "live_ms": fate.get("live_ms"),
        })

    sockets = {}
    numa_info = {int(n.get("id", 0)): n for n in topology.get("numa_nodes") or []}
    for cpu in _cpu_table(topology):
        cid = cpu["id"]
        if cid in part_of:
            role, partition = "partition", part_of[cid]
        elif cid in pool:
            role, partition = ("housekeeping+pool" if cid in housekeeping else "pool"), None
        elif cid in housekeeping:
            role, partition = "housekeeping", None
        else:
            role, partition = "unassigned", None
        socket = sockets.setdefault(cpu["socket"], {})
        numa = socket.setdefault(cpu["node"], {})
        numa.setdefault(cpu["core"], []).append({
            "id": cid, "role": role, "partition": partition,
            "letter": letters.get(partition, "?") if partition else None,
            "guests": on_cpu.get(cid, []),
        })

    shown_numa = set()
    socket_list = []
    for sid in sorted(sockets):
        numa_list = []
        for nid in sorted(sockets[sid]):
            numa = numa_info.get(nid, {})
            hugepages = []
            if nid not in shown_numa:
                for size, pages in sorted((numa.get("hugepages") or {}).items(), key=lambda kv: int(kv[0])):
                    hugepages.append({"size_kb": int(size), "total": int(pages.get("total", 0) or 0),
                                      "free": int(pages.get("free", 0) or 0)})
            shown_numa.add(nid)
            cores = [{"id": core, "cpus": sorted(cpus, key=lambda c: c["id"])}
                     for core, cpus in sorted(sockets[sid][nid].items(), key=lambda kv: min(c["id"] for c in kv[1]))]
            numa_list.append({"id": nid, "hugepages": hugepages,
                              "mem_total_kb": int(numa.get("mem_total_kb", 0) or 0),
                              "mem_free_kb": int(numa.get("mem_free_kb", 0) or 0), "cores": cores})
        socket_list.append({"id": sid, "numa_nodes": numa_list})

    regime = info.get("regime") or {}
    return {
        "host": str(host),
        "hostname": str(info.get("hostname", host)),
        "regime": str(regime.get("name", "unknown")),
        "regime_source": str(regime.get("source", "")),
        "recorded_at": regime.get("recorded_at"),
        "cpu_count": sum(len(c["cpus"]) for s in socket_list for n in s["numa_nodes"] for c in n["cores"]),
        "smt": bool(topology.get("smt")),
        "housekeeping": format_cpulist(housekeeping),
        "pool": format_cpulist(pool),
        "partitions": partitions,
        "sockets": socket_list,
        "guests": sorted(guests, key=lambda g: g["name"]),
        "transition": transition,
    }


def core_map(nodes, extras=None, now=None):
    """The model of the node group: summary and one entry per node (see DOCUMENTATION)."""
    if not isinstance(nodes, dict):
        raise AnsibleFilterError("core_map: expects {inventory host: node_info result}, got %s" % type(nodes).__name__)
    extras = extras or {}
    try:
        names = sorted({str(p["name"]) for info in nodes.values()
                        for p in (info.get("layout") or {}).get("partitions") or []})
        letters = {name: PARTITION_LETTERS[i % len(PARTITION_LETTERS)] for i, name in enumerate(names)}
        models = [_node_model(host, nodes[host], extras.get(host) or {}, letters) for host in sorted(nodes)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AnsibleFilterError("core_map: a node_info result is not as expected: %s" % exc)
    regimes = {}
    for node in models:
        regimes[node["regime"]] = regimes.get(node["regime"], 0) + 1
    parts = [p for node in models for p in node["partitions"]]
    guests = [g for node in models for g in node["guests"]]
    roles = {}
    for node in models:
        for cpu in iter_cpus(node):
            roles[cpu["role"]] = roles.get(cpu["role"], 0) + 1
    summary = {
        "nodes": len(models),
        "regimes": dict(sorted(regimes.items())),
        "cpus": sum(n["cpu_count"] for n in models),
        "cpu_roles": dict(sorted(roles.items())),
        "partitions": {"total": len(parts), "used": sum(1 for p in parts if p["used_by"]),
                       "free": sum(1 for p in parts if not p["used_by"])},
        "guests": {"total": len(guests), "running": sum(1 for g in guests if g["running"]),
                   "placement": {mode: sum(1 for g in guests if g["placement"] == mode) for mode in PLACEMENTS}},
    }
    stamp = now or datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return {"generated_at": stamp, "partition_letters": letters, "summary": summary, "nodes": models}


def iter_cpus(node):
    for socket in node["sockets"]:
        for numa in socket["numa_nodes"]:
            for core in numa["cores"]:
                yield from core["cpus"]


def _colour(role, partition, letters):
    if role == "partition":
        names = sorted(letters)
        index = names.index(partition) if partition in names else 0
        return PARTITION_COLOURS[index % len(PARTITION_COLOURS)]
    return ROLE_COLOURS.get(role, "#ffffff")


# --- HTML -------------------------------------------------------------------------------------------

def _e(value):
    """Every value that reaches the page goes through here."""
    return html.escape("" if value is None else str(value), quote=True)


CSS = """
body{font:14px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:16px;color:#1d2630;background:#f6f7f9}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0}
.meta{color:#5b6672;margin-bottom:12px}
table{border-collapse:collapse;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #d5dae0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.summary{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}
.legend span.swatch{display:inline-block;width:12px;height:12px;border:1px solid #7a848e;margin:0 4px -2px 10px}
.node{background:#fff;border:1px solid #cfd5db;border-radius:6px;padding:10px 12px;margin:12px 0}
.node header{display:flex;gap:12px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}
.regime{padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;background:#dde3ea}
.regime-space_shared{background:#ffd6cc}.regime-time_shared{background:#cfeaf6}.regime-mixed{background:#efe3b5}
.topo{display:flex;gap:10px;flex-wrap:wrap}
.socket{border:2px solid #56606b;border-radius:6px;padding:4px 6px}
.socket>.label,.numa>.label{font-size:11px;color:#3a444e;margin-bottom:3px}
.numas{display:flex;gap:8px;flex-wrap:wrap}
.numa{border:1px dashed #7a848e;border-radius:4px;padding:4px}
.cores{display:flex;gap:4px;flex-wrap:wrap}
.core{display:flex;gap:1px;border:1px solid #9aa3ad;border-radius:3px;padding:1px;background:#eef1f4}
.cpu{width:58px;min-height:46px;border:1px solid #56606b;border-radius:2px;padding:2px;font-size:11px;overflow:hidden}
.cpu .id{font-weight:700}.cpu .role{font-size:10px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cpu.unassigned{border-style:dashed}
.cpu .guest{display:block;background:#1d2630;color:#fff;border-radius:2px;padding:0 2px;margin-top:2px;font-size:10px;
 white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.cpu .guest.stopped{background:#8b949e}
.pool-guests{margin:6px 0 0;padding:4px 6px;background:#e6f3f9;border:1px solid #8ecae6;border-radius:4px}
.pool-guests .guest{display:inline-block;margin:2px 4px;padding:0 6px;border-radius:8px;background:#fff;border:1px solid #5aa9cc}
.hp{font-size:11px;color:#3a444e;margin-top:3px}
.transition{font-size:12px;color:#3a444e}
"""


def _cell(cpu, letters):
    colour = _colour(cpu["role"], cpu["partition"], letters)
    label = cpu["partition"] if cpu["role"] == "partition" else SHORT_ROLES.get(cpu["role"], cpu["role"])
    out = ['<div class="cpu %s" data-cpu="%s" data-role="%s"%s style="background:%s" title="CPU %s: %s">'
           % (_e(cpu["role"].replace("+", "-")), _e(cpu["id"]), _e(cpu["role"]),
              ' data-partition="%s"' % _e(cpu["partition"]) if cpu["partition"] else "",
              _e(colour), _e(cpu["id"]), _e(label))]
    out.append('<div class="id">%s</div><div class="role">%s</div>' % (_e(cpu["id"]), _e(label)))
    for guest in cpu["guests"]:
        out.append('<span class="guest%s" data-guest="%s" data-vcpu="%s" title="%s vCPU %s">%s</span>'
                   % ("" if guest["running"] else " stopped", _e(guest["name"]), _e(guest["vcpu"]),
                      _e(guest["name"]), _e(guest["vcpu"]), _e(guest["name"])))
    out.append("</div>")
    return "".join(out)


def _table(headers, rows, numeric=()):
    out = ["<table><tr>%s</tr>" % "".join("<th>%s</th>" % _e(h) for h in headers)]
    for row in rows:
        out.append("<tr>%s</tr>" % "".join('<td%s>%s</td>' % (' class="num"' if i in numeric else "", _e(v))
                                           for i, v in enumerate(row)))
    out.append("</table>")
    return "".join(out)


def _node_html(node, letters):
    out = ['<section class="node" data-host="%s" data-cpus="%s" data-guests="%s">'
           % (_e(node["host"]), _e(node["cpu_count"]), _e(len(node["guests"])))]
    out.append('<header><h2>%s</h2><span>%s</span><span class="regime regime-%s">%s</span><span class="meta">%s%s</span></header>'
               % (_e(node["host"]), _e(node["hostname"]), _e(node["regime"]), _e(node["regime"]),
                  _e(node["regime_source"]), _e(" %s" % node["recorded_at"]) if node["recorded_at"] else ""))
    out.append('<div class="meta">%s CPUs; housekeeping %s; pool %s; %s</div>'
               % (_e(node["cpu_count"]), _e(node["housekeeping"] or "none"), _e(node["pool"] or "none"),
                  _e(", ".join("partition %s: CPUs %s" % (p["name"], p["cpus"]) for p in node["partitions"])
                     or "no partitions")))
    out.append('<div class="topo">')
    for socket in node["sockets"]:
        out.append('<div class="socket" data-socket="%s"><div class="label">socket %s</div><div class="numas">'
                   % (_e(socket["id"]), _e(socket["id"])))
        for numa in socket["numa_nodes"]:
            out.append('<div class="numa" data-numa="%s"><div class="label">NUMA node %s</div><div class="cores">'
                       % (_e(numa["id"]), _e(numa["id"])))
            for core in numa["cores"]:
                out.append('<div class="core" data-core="%s" title="core %s">%s</div>'
                           % (_e(core["id"]), _e(core["id"]), "".join(_cell(cpu, letters) for cpu in core["cpus"])))
            out.append("</div>")
            pages = ["%s pages %s free of %s" % (_hp_size(h["size_kb"]), h["free"], h["total"])
                     for h in numa["hugepages"]]
            out.append('<div class="hp">hugepages %s; memory %.1f of %.1f GiB free</div>'
                       % (_e("; ".join(pages) or "none"), numa["mem_free_kb"] / 1048576.0, numa["mem_total_kb"] / 1048576.0))
            out.append("</div>")
        out.append("</div></div>")
    out.append("</div>")
    shared = [g for g in node["guests"] if g["placement"] == "shared"]
    out.append('<div class="pool-guests"><b>over the pool (%s)</b>: %s</div>'
               % (_e(node["pool"] or "none"),
                  "".join('<span class="guest" data-guest="%s">%s</span>' % (_e(g["name"]), _e(g["name"])) for g in shared)
                  or "no shared guests"))
    if node["transition"]:
        tr = node["transition"]
        out.append('<p class="transition">Last transition: to %s, %s, %s steps, %s in all (%s).</p>'
                   % (_e(tr["regime"]), "changed" if tr["changed"] else "no change", _e(tr["steps"]),
                      _e(ms(tr["total_ms"])), _e(", ".join("%s %s" % (k, ms(v)) for k, v in tr["timings_ms"].items()))))
    if node["guests"]:
        rows = [(g["name"], g["state"], g["placement"], g["partition"] or "-", g["cpus"] or "-", g["vcpus"],
                 g["memory_mib"], "yes" if g["hugepages"] else "no", g["fate"] or "-", ms(g["live_ms"]),
                 ms(g["max_gap_ms"]), g["detour"] or "-") for g in node["guests"]]
        out.append(_table(["guest", "state", "placement", "partition", "CPUs", "vCPUs", "MiB", "hugepages",
                           "last change", "live", "largest heartbeat gap", "detour"], rows, numeric=(5, 6, 9, 10)))
    out.append("</section>")
    return "".join(out)


def _hp_size(size_kb):
    size_kb = int(size_kb)
    return "%d GiB" % (size_kb // 1048576) if size_kb >= 1048576 else "%d MiB" % (size_kb // 1024)


def core_map_html(model, title="hpcvirt core map"):
    """One self-contained page: summary, legend, one section per node. No scripts, no fetches."""
    if not isinstance(model, dict) or "nodes" not in model:
        raise AnsibleFilterError("core_map_html: expects the model core_map returns")
    letters = model.get("partition_letters") or {}
    summary = model["summary"]
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>%s</title><style>%s</style></head><body>" % (_e(title), CSS),
           "<h1>%s</h1>" % _e(title),
           '<div class="meta">%s node%s, %s CPUs, generated %s</div>'
           % (_e(summary["nodes"]), "" if summary["nodes"] == 1 else "s", _e(summary["cpus"]),
              _e(model.get("generated_at")))]
    out.append('<div class="summary">')
    out.append(_table(["regime", "nodes"], sorted(summary["regimes"].items()), numeric=(1,)))
    parts = summary["partitions"]
    out.append(_table(["partitions", "count"], [("used", parts["used"]), ("free", parts["free"]), ("total", parts["total"])],
                      numeric=(1,)))
    guests = summary["guests"]
    rows = [(mode, guests["placement"][mode]) for mode in PLACEMENTS]
    rows += [("running", guests["running"]), ("total", guests["total"])]
    out.append(_table(["guests by placement", "count"], rows, numeric=(1,)))
    out.append(_table(["CPUs by role", "count"], sorted(summary["cpu_roles"].items()), numeric=(1,)))
    out.append("</div>")
    legend = [("housekeeping", ROLE_COLOURS["housekeeping"]), ("pool", ROLE_COLOURS["pool"]),
              ("housekeeping and pool (uncarved)", ROLE_COLOURS["housekeeping+pool"]),
              ("unassigned", ROLE_COLOURS["unassigned"])]
    legend += [("partition %s" % name, _colour("partition", name, letters)) for name in sorted(letters)]
    out.append('<div class="legend">%s</div>' % "".join(
        '<span class="swatch" style="background:%s"></span>%s' % (_e(colour), _e(label)) for label, colour in legend))
    for node in model["nodes"]:
        out.append(_node_html(node, letters))
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- text -------------------------------------------------------------------------------------------

def cpu_symbol(cpu):
    if cpu["role"] == "partition":
        letter = cpu["letter"] or "?"
        return letter if any(g["running"] for g in cpu["guests"]) else letter.lower()
    return TEXT_SYMBOLS.get(cpu["role"], "?")


def node_map_text(node):
    """'s0[n0 hh AA aa ..]' - sockets, NUMA nodes, cores (siblings together, cores apart when SMT)."""
    sockets = []
    for socket in node["sockets"]:
        numas = []
        for numa in socket["numa_nodes"]:
            sep = " " if node["smt"] else ""
            numas.append("n%s %s" % (numa["id"], sep.join("".join(cpu_symbol(c) for c in core["cpus"])
                                                          for core in numa["cores"])))
        sockets.append("s%s[%s]" % (socket["id"], " ".join(numas)))
    return " ".join(sockets)


def _hugepages_text(node):
    pools = []
    for socket in node["sockets"]:
        for numa in socket["numa_nodes"]:
            for pages in numa["hugepages"]:
                if pages["total"]:
                    pools.append("n%s %s/%s x %s free" % (numa["id"], pages["free"], pages["total"], _hp_size(pages["size_kb"])))
    return "hugepages " + (", ".join(pools) if pools else "none")


def core_map_text(model, guests=True):
    """The terminal view: summary sentence, one line per node, the legend, and each node's guests."""
    if not isinstance(model, dict) or "nodes" not in model:
        raise AnsibleFilterError("core_map_text: expects the model core_map returns")
    summary = model["summary"]
    letters = model.get("partition_letters") or {}
    lines = ["%d node(s): %s. Partitions: %d used, %d free. Guests: %s (%d running)." % (
        summary["nodes"], ", ".join("%d %s" % (n, r) for r, n in summary["regimes"].items()) or "none",
        summary["partitions"]["used"], summary["partitions"]["free"],
        ", ".join("%d %s" % (summary["guests"]["placement"][m], m) for m in PLACEMENTS), summary["guests"]["running"])]
    rows = []
    for node in model["nodes"]:
        counts = {m: sum(1 for g in node["guests"] if g["placement"] == m) for m in PLACEMENTS}
        rows.append([node["host"], node["regime"], node_map_text(node),
                     "%d guest%s (%d dedicated, %d shared)" % (len(node["guests"]), "" if len(node["guests"]) == 1 else "s",
                                                               counts["dedicated"], counts["shared"]),
                     _hugepages_text(node)])
    lines.append(text_table(rows, numeric=()))
    legend = ["h housekeeping", ". pool", ": housekeeping and pool (uncarved)", "- unassigned"]
    legend += ["%s partition %s (lower case: free)" % (letter, name) for name, letter in sorted(letters.items(), key=lambda kv: kv[1])]
    lines.append("Legend: " + ", ".join(legend))
    if guests:
        for node in model["nodes"]:
            if node["transition"]:
                tr = node["transition"]
                lines.append("%s: last change to %s, %s, %d steps, %s in all (%s)." % (
                    node["host"], tr["regime"], "changed" if tr["changed"] else "no change", tr["steps"],
                    ms(tr["total_ms"]), ", ".join("%s %s" % (k, ms(v)) for k, v in tr["timings_ms"].items())))
            if not node["guests"]:
                lines.append("%s: no guests." % node["host"])
                continue
            lines.append("%s guests:" % node["host"])
            table = text_table([[g["name"], g["state"], g["placement"], g["partition"] or "-", g["cpus"] or "-",
                                 g["vcpus"], g["memory_mib"], ms(g["max_gap_ms"]), g["detour"] or "-"]
                                for g in node["guests"]],
                               headers=["guest", "state", "placement", "partition", "CPUs", "vCPUs", "MiB",
                                        "largest gap", "detour"], numeric=(5, 6, 7))
            lines.extend("  " + line for line in table.splitlines())
    return "\n".join(lines)


class FilterModule:
    def filters(self):
        return {"core_map": core_map, "core_map_html": core_map_html, "core_map_text": core_map_text}
