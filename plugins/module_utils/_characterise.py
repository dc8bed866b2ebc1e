# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Characterisation of a node's isolation: OS noise per environment, load and confinement.

One call measures one *environment*: the noise probe natively on one CPU (a partition CPU or a
pool CPU), or the probe inside a running tiny guest (read from its serial console). For each
requested combination of host *load* (``none``, or ``host``: one busy task per online CPU started
as an ordinary host task) and *confinement* (``unconfined``, ``confined`` to housekeeping with
``_confine``), it measures for ``seconds`` and summarises the probe's lines (``_noise``).

The node is left as it was found: confinement is put back to its state before the call (recorded
in a journal first, so a killed run is put back by the next one) and the loads end by themselves.
A native probe runs in a transient cpuset cgroup ``hpcvirt-noise-probe`` holding only its CPU, so
that it may run on a partition CPU even when the host is confined.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from ansible_collections.hpcvirt.regime.plugins.module_utils import _confine, _noise
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import read_json, remove_state, write_json_atomic
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

ENVIRONMENTS = ("native", "guest")
LOADS = ("none", "host")
CONFINEMENTS = ("unconfined", "confined")
PROBE_CGROUP = "hpcvirt-noise-probe"
JOURNAL = "var/lib/hpcvirt/journal/characterise.json"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
GUEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")


class CharacteriseError(HpcvirtError):
    pass


def argument_spec():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import libvirt_argument_spec

    spec = libvirt_argument_spec()
    spec.update(
        environment=dict(type="str", required=True, choices=list(ENVIRONMENTS)),
        target=dict(type="str", choices=["partition", "pool"]),
        cpu=dict(type="int"),
        guest=dict(type="str"),
        label=dict(type="str"),
        loads=dict(type="list", elements="str", choices=list(LOADS), default=list(LOADS)),
        confinement=dict(type="list", elements="str", choices=list(CONFINEMENTS), default=list(CONFINEMENTS)),
        seconds=dict(type="int", default=10),
        interval_ms=dict(type="int", default=1000),
        threshold_us=dict(type="float", default=2.0),
        housekeeping=dict(type="str"),
        probe=dict(type="path", default=_noise.DEFAULT_PROBE),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )
    return spec


def resolve(params, layout, online):
    """The request with every value decided and checked, or CharacteriseError naming the field."""
    env = params["environment"]
    if not 1 <= params["seconds"] <= 600:
        raise CharacteriseError("seconds: must be from 1 to 600, not %s" % params["seconds"])
    if not 100 <= params["interval_ms"] <= 10000:
        raise CharacteriseError("interval_ms: must be from 100 to 10000, not %s" % params["interval_ms"])
    if params["interval_ms"] > params["seconds"] * 1000:
        raise CharacteriseError("interval_ms: longer than the %s s a cell lasts" % params["seconds"])
    if not 0.1 <= params["threshold_us"] <= 1000000:
        raise CharacteriseError("threshold_us: must be from 0.1 to 1000000, not %s" % params["threshold_us"])
    if not params["loads"] or not params["confinement"]:
        raise CharacteriseError("loads and confinement: each needs at least one value")
    label = params.get("label")
    if label is not None and not LABEL.fullmatch(label):
        raise CharacteriseError("label: 1-32 letters, digits, '_', '.', '-', not %r" % label)
    hk_text = params.get("housekeeping") or (layout or {}).get("housekeeping")
    if "confined" in params["confinement"] and not hk_text:
        raise CharacteriseError("housekeeping: no layout file names the housekeeping CPUs; give housekeeping")
    try:
        hk = parse_cpulist(hk_text) if hk_text else None
    except ValueError as exc:
        raise CharacteriseError("housekeeping: %s" % exc)
    if hk is not None and (not hk or not hk <= online):
        raise CharacteriseError("housekeeping: %r is not a non-empty set of online CPUs (%s)"
                                % (hk_text, format_cpulist(online)))
    request = {"environment": env, "loads": list(dict.fromkeys(params["loads"])),
               "confinement": list(dict.fromkeys(params["confinement"])), "seconds": params["seconds"],
               "interval_ms": params["interval_ms"], "threshold_us": params["threshold_us"],
               "housekeeping": format_cpulist(hk) if hk is not None else None, "probe": params["probe"]}
    if env == "native":
        if params.get("guest"):
            raise CharacteriseError("guest: only for environment=guest")
        cpu = params.get("cpu")
        target = params.get("target")
        if cpu is None:
            if target is None:
                raise CharacteriseError("target: give target (partition or pool) or cpu for environment=native")
            cpu = pick_cpu(target, layout)
        if cpu not in online:
            raise CharacteriseError("cpu: %s is not an online CPU (%s)" % (cpu, format_cpulist(online)))
        request.update(cpu=cpu, label=label or target or "cpu%d" % cpu)
        if not os.path.isabs(request["probe"]):
            raise CharacteriseError("probe: must be an absolute path")
    else:
        guest = params.get("guest")
        if not guest or not GUEST_NAME.fullmatch(guest):
            raise CharacteriseError("guest: a domain name (letters, digits, '_.+-', at most 64) is required "
                                    "for environment=guest")
        if params.get("cpu") is not None or params.get("target"):
            raise CharacteriseError("cpu, target: only for environment=native (a guest runs where it is placed)")
        request.update(guest=guest, label=label or "guest")
    return request


def pick_cpu(target, layout):
    """The first CPU of the first partition, or the first pool CPU outside every partition."""
    if not layout:
        raise CharacteriseError("target: no layout file; carve partitions first or give cpu")
    if target == "partition":
        parts = layout.get("partitions") or []
        if not parts:
            raise CharacteriseError("target: the layout has no partition")
        return min(parse_cpulist(parts[0]["cpus"]))
    pool = parse_cpulist(layout.get("pool") or "")
    taken = frozenset().union(*(parse_cpulist(p["cpus"]) for p in layout.get("partitions") or []))
    free = sorted(pool - taken)
    if not free:
        raise CharacteriseError("target: the layout has no pool CPU")
    return free[0]


def cells(request):
    """The (confinement, load) combinations in the order they are measured (fewest toggles)."""
    return [(conf, load) for conf in request["confinement"] for load in request["loads"]]


# ---------------------------------------------------------------------------------------------
# Measuring (live)


def _probe_cgroup(layout, cpu, mems):
    """Create the transient probe cgroup (cpuset.cpus = cpu); its cgroup.procs path."""
    path = os.path.join(layout.cpuset_root, PROBE_CGROUP)
    if layout.cpuset_version == 2:
        control = os.path.join(layout.cpuset_root, "cgroup.subtree_control")
        if "cpuset" not in (read_text(layout.cpuset_root, "cgroup.subtree_control", "") or "").split():
            with open(control, "w") as handle:
                handle.write("+cpuset")
    os.makedirs(path, exist_ok=True)
    if layout.cpuset_version == 1:
        with open(os.path.join(path, "cpuset.mems"), "w") as handle:
            handle.write(mems)
    with open(os.path.join(path, "cpuset.cpus"), "w") as handle:
        handle.write(str(cpu))
    return os.path.join(path, "cgroup.procs")


def remove_probe_cgroup(layout):
    path = os.path.join(layout.cpuset_root, PROBE_CGROUP)
    for _attempt in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)         # the probe is still exiting


def start_load(probe, seconds, count):
    """``count`` busy host tasks (the probe with a threshold nothing reaches), ending by themselves."""
    argv = _noise.probe_command(probe, seconds=seconds, interval_ms=60000, threshold_us=1000000.0)
    return [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _index in range(count)]


def stop_load(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_console_records(path, offset, wait_s, interval_ms):
    """Noise records a guest appends to its console from ``offset`` over ``wait_s`` seconds; the
    first line is dropped (its interval began before the cell)."""
    time.sleep(wait_s + interval_ms / 1000.0 + 0.3)
    with open(path, "r", errors="replace") as handle:
        handle.seek(offset)
        records = _noise.parse(handle.read())
    return records[1:]


def wait_for_noise_line(path, timeout=120):
    """Wait until a guest's console holds a noise line (a guest just started needs a few s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "r", errors="replace") as handle:
                if _noise.parse(handle.read()[-20000:]):
                    return
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise CharacteriseError("guest: its console %s shows no noise line within %d s (is the probe on? "
                                    "kernel argument hpcvirt.noise_ms, docs/guest-image.md)" % (path, timeout))
        time.sleep(0.5)


def set_confinement(want, housekeeping, runner, timings):
    """Confine (``confined``) or release; the read-back after it (None when released)."""
    snapshot = _confine.read_node("/", runner)
    if want == "confined":
        plan = _confine.plan_confine(snapshot, housekeeping)
    else:
        plan = _confine.plan_release(snapshot)
    refused = _confine.apply_plan(plan, snapshot, runner, timings)
    if want != "confined":
        return None
    back = _confine.read_back(_confine.read_node("/", runner), housekeeping)
    back["refused"] = refused
    return back


def measure(request, console_path=None, guest_cpus=None, runner=None, timings=None, ncpus=None):
    """Measure every cell of ``request``; the node's confinement is put back as found."""
    if request["environment"] == "guest":
        wait_for_noise_line(console_path)
    snapshot = _confine.read_node("/", runner)
    layout = snapshot["layout"]
    journal = read_json("/", JOURNAL)
    found = journal["found"] if journal else _confine.status(snapshot)
    write_json_atomic("/", JOURNAL, {"found": found})
    results, readbacks = [], {}
    try:
        for conf, load in cells(request):
            readback = set_confinement(conf, request["housekeeping"], runner, timings)
            if readback is not None:
                readbacks[conf] = {k: readback[k] for k in ("held", "escaped", "cannot_move", "left", "refused")}
            loads = start_load(request["probe"], request["seconds"] + 5, ncpus) if load == "host" else []
            started = time.time()
            try:
                if request["environment"] == "native":
                    procs = _probe_cgroup(layout, request["cpu"], format_cpulist(snapshot["mems"]))
                    try:
                        records = _noise.run_probe(request["probe"], cpu=request["cpu"], seconds=request["seconds"],
                                                   interval_ms=request["interval_ms"],
                                                   threshold_us=request["threshold_us"], cgroup_procs=procs)
                    finally:
                        remove_probe_cgroup(layout)
                else:
                    offset = os.path.getsize(console_path)
                    records = read_console_records(console_path, offset, request["seconds"], request["interval_ms"])
            finally:
                stop_load(loads)
            cell = {"environment": request["environment"], "label": request["label"], "load": load,
                    "confinement": conf, "started": round(started, 3), "seconds": request["seconds"]}
            cell["cpu"] = request["cpu"] if request["environment"] == "native" else guest_cpus
            if request["environment"] == "guest":
                cell["guest"] = request["guest"]
            cell.update(_noise.summarise(records))
            results.append(cell)
    finally:
        # Put confinement back as found (also after a failure part-way), then drop the journal.
        if found.get("confined"):
            set_confinement("confined", found["housekeeping"], runner, timings)
        else:
            set_confinement("unconfined", None, runner, timings)
        remove_state("/", JOURNAL)
    return results, readbacks, found, bool(journal)


def guest_console(conn, name, lxml_etree):
    """The serial console file of a running guest, and its vCPUs' host CPUs now."""
    try:
        dom = conn.lookupByName(name)
    except Exception:
        raise CharacteriseError("guest: no domain named %s" % name)
    if not dom.isActive():
        raise CharacteriseError("guest: %s is not running" % name)
    root = lxml_etree.fromstring(dom.XMLDesc(0).encode())
    paths = root.xpath("/domain/devices/serial[@type='file']/source/@path")
    if not paths:
        raise CharacteriseError("guest: %s has no serial console file to read the probe from" % name)
    cpus = set()
    for pins in dom.vcpuPinInfo(0):
        cpus |= {i for i, on in enumerate(pins) if on}
    return paths[0], format_cpulist(cpus)


# ---------------------------------------------------------------------------------------------
# The report


def _fmt(value, digits=1):
    return "-" if value is None else ("%.*f" % (digits, value))


def ratios(cells_list):
    """confined / unconfined per (environment, label, load) for max_us and noise_ppm."""
    out = []
    index = {(c["environment"], c["label"], c["load"], c["confinement"]): c for c in cells_list}
    for (env, label, load, conf), cell in sorted(index.items()):
        if conf != "unconfined":
            continue
        other = index.get((env, label, load, "confined"))
        if not other:
            continue
        entry = {"environment": env, "label": label, "load": load}
        for key in ("max_us", "noise_ppm"):
            a, b = cell.get(key), other.get(key)
            entry[key + "_ratio"] = round(a / b, 2) if a and b else None
        out.append(entry)
    return out


def render_report(cells_list, node=""):
    """An aligned table, one row per cell, then the ratios unconfined / confined."""
    head = ("environment", "where", "load", "confinement", "max us", "noise ppm", "detours/s", "spun s")
    rows = []
    for c in cells_list:
        where = "cpu %s" % c["cpu"] if c["environment"] == "native" else "%s (cpu %s)" % (c.get("guest"), c["cpu"])
        rows.append((c["environment"] + (" " + c["label"] if c.get("label") else ""), where, c["load"],
                     c["confinement"], _fmt(c["max_us"]), _fmt(c["noise_ppm"]), _fmt(c["detours_per_s"]),
                     _fmt(c["span_us"] / 1e6 if c.get("span_us") is not None else None, 2)))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    threshold = _fmt(cells_list[0].get("threshold_us")) if cells_list else "-"
    lines = ["OS noise on %s (probe threshold %s us)" % (node or "this node", threshold)]
    lines.append("  ".join(h.ljust(w) if i < 4 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for row in rows:
        lines.append("  ".join(str(v).ljust(w) if i < 4 else str(v).rjust(w)
                               for i, (v, w) in enumerate(zip(row, widths))))
    rats = ratios(cells_list)
    if rats:
        lines.append("")
        lines.append("unconfined / confined (higher: confinement removed more noise)")
        rhead = ("environment", "load", "max us", "noise ppm")
        rrows = [(r["environment"] + " " + r["label"], r["load"], _fmt(r["max_us_ratio"], 2),
                  _fmt(r["noise_ppm_ratio"], 2)) for r in rats]
        rw = [max(len(str(r[i])) for r in rrows + [rhead]) for i in range(len(rhead))]
        lines.append("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(rhead, rw))))
        for row in rrows:
            lines.append("  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, rw))))
    return "\n".join(lines)


def run(module, libvirt_helpers):
    """The whole module: resolve, then (unless check mode) measure; the result fields."""
    params = module.params
    from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node

    node = read_node(module, guests=False)     # the one node model: topology and the layout file
    online = node.online
    request = resolve(params, node.record, online)
    planned = [{"confinement": conf, "load": load} for conf, load in cells(request)]
    result = {"changed": False, "request": request, "cells_planned": planned, "cells": [], "measured": False}
    console, guest_cpus = None, None
    if request["environment"] == "guest":
        conn = libvirt_helpers.open_connection(module)
        libvirt_helpers.require_libraries(module)
        console, guest_cpus = guest_console(conn, request["guest"], libvirt_helpers.etree)
    elif not os.access(request["probe"], os.X_OK):
        raise CharacteriseError("probe: %s is not an executable (make noise installs it)" % request["probe"])
    if module.check_mode:
        return result

    timings = Timings()
    started = time.monotonic()

    def runner(argv):
        return module.run_command(argv)

    measured, readbacks, found, interrupted = measure(request, console_path=console, guest_cpus=guest_cpus,
                                                      runner=runner, timings=timings, ncpus=len(online))
    timings.add("measure", (time.monotonic() - started) * 1000.0)
    result.update(cells=measured, measured=True, confinement_readback=readbacks, confinement_found=found,
                  interrupted_run=interrupted, timings=timings.to_dict(),
                  report=render_report(measured).splitlines())
    return result
