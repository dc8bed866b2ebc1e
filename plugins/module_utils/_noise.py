# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The noise probe's output (tools/noise/hpcvirt-noise.c), parsed and summarised; running it.

The probe spins on one CPU and, per report interval, prints::

    hpcvirt-noise seq=<n> cpu=<c> span_us=<us> count=<n> total_us=<us> max_us=<us> thr_us=<us>

``span_us`` is the time it spun in that interval, ``count`` the detours (gaps between two clock
reads) longer than ``thr_us``, ``total_us`` their sum, ``max_us`` the longest. The same line comes
from the host (run by :func:`run_probe`) and from the tiny guest's serial console, where heartbeat
lines are interleaved with it. Parsing is pure; nothing here imports Ansible or libvirt.
"""

from __future__ import annotations

import os
import re
import subprocess

NOISE_LINE = re.compile(
    r"hpcvirt-noise seq=(?P<seq>\d+) cpu=(?P<cpu>-?\d+) span_us=(?P<span_us>\d+) count=(?P<count>\d+) "
    r"total_us=(?P<total_us>\d+(?:\.\d+)?) max_us=(?P<max_us>\d+(?:\.\d+)?) thr_us=(?P<thr_us>\d+(?:\.\d+)?)")

DEFAULT_PROBE = "/usr/local/libexec/hpcvirt-noise"

# Bounds the probe itself enforces (tools/noise/hpcvirt-noise.c); checked here first so that a bad
# value is refused naming the field before anything runs.
LIMITS = {
    "seconds": (1, 3600),
    "interval_ms": (10, 60000),
    "threshold_us": (0.1, 1000000.0),
    "cpu": (0, 4095),
}


class NoiseError(Exception):
    pass


def parse_line(line):
    """One probe line as a dict, or None when the line is not one (a heartbeat, kernel output)."""
    match = NOISE_LINE.search(line)
    if not match:
        return None
    values = match.groupdict()
    return {
        "seq": int(values["seq"]),
        "cpu": int(values["cpu"]),
        "span_us": int(values["span_us"]),
        "count": int(values["count"]),
        "total_us": float(values["total_us"]),
        "max_us": float(values["max_us"]),
        "thr_us": float(values["thr_us"]),
    }


def parse(text):
    """Every probe line in ``text`` (probe output or a console log), in order."""
    records = []
    for line in text.splitlines():
        record = parse_line(line)
        if record is not None:
            records.append(record)
    return records


def summarise(records):
    """One figure set for a run of intervals.

    ``noise_ppm`` is the share of the spun time lost to detours, in parts per million;
    ``detours_per_s`` the rate of detours; ``max_us`` the longest single detour. An empty run
    gives ``intervals: 0`` and None for the figures, never a division by zero.
    """
    span = sum(r["span_us"] for r in records)
    total = sum(r["total_us"] for r in records)
    count = sum(r["count"] for r in records)
    summary = {
        "intervals": len(records),
        "span_us": span,
        "count": count,
        "total_us": round(total, 1),
        "max_us": round(max((r["max_us"] for r in records), default=0.0), 1) if records else None,
        "threshold_us": records[0]["thr_us"] if records else None,
        "noise_ppm": round(total * 1e6 / span, 1) if span else None,
        "detours_per_s": round(count * 1e6 / span, 1) if span else None,
        "cpus": sorted({r["cpu"] for r in records}),
    }
    return summary


def _check(name, value):
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise NoiseError("%s must be a number from %s to %s, not %r" % (name, low, high, value))
    return value


def probe_command(probe, cpu=None, seconds=10, interval_ms=1000, threshold_us=2.0, duty=100):
    """The probe's argument list (no shell), every value checked against the probe's bounds."""
    if not isinstance(probe, str) or not os.path.isabs(probe) or "\0" in probe:
        raise NoiseError("probe must be an absolute path, not %r" % (probe,))
    argv = [probe, "-d", "%d" % _check("seconds", seconds), "-i", "%d" % _check("interval_ms", interval_ms),
            "-t", "%g" % _check("threshold_us", threshold_us)]
    if isinstance(duty, bool) or not isinstance(duty, int) or not 1 <= duty <= 100:
        raise NoiseError("duty must be an integer from 1 to 100, not %r" % (duty,))
    argv += ["-u", "%d" % duty]
    if cpu is not None:
        if isinstance(cpu, bool) or not isinstance(cpu, int):
            raise NoiseError("cpu must be an integer, not %r" % (cpu,))
        argv += ["-c", "%d" % _check("cpu", cpu)]
    return argv


def start_probe(argv, cgroup_procs=None):
    """Start the probe; with ``cgroup_procs`` (a cgroup's ``cgroup.procs`` file) it joins that
    cgroup before it runs, so it may use CPUs its parent's cgroup does not allow."""

    def join():
        with open(cgroup_procs, "w") as handle:
            handle.write("0\n")         # "0" is the writing process itself

    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=join if cgroup_procs else None)


def finish_probe(proc, timeout):
    """Wait for a started probe; its records, or NoiseError with what it said."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise NoiseError("the noise probe did not finish within %ss" % timeout)
    if proc.returncode != 0:
        raise NoiseError("the noise probe failed (exit %s): %s" % (proc.returncode, (err or out).strip()[:500]))
    return parse(out)


def run_probe(probe, cpu=None, seconds=10, interval_ms=1000, threshold_us=2.0, cgroup_procs=None):
    """Run the probe on ``cpu`` for ``seconds``; return its interval records."""
    argv = probe_command(probe, cpu=cpu, seconds=seconds, interval_ms=interval_ms, threshold_us=threshold_us)
    return finish_probe(start_probe(argv, cgroup_procs), timeout=seconds + 30)
