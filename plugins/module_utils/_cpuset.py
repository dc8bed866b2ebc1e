# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CPU sets in the kernel's notations.

Three notations meet on a node: the cpu-list of sysfs and cgroups (``0-3,8,10-11``, with the
``a-b:used/group`` stride form of ``bitmap_parselist``), the comma-grouped hex mask of
``/proc/irq/*/smp_affinity`` (``ff,ffffffff``), and libvirt's tuple of booleans per host CPU.
Everything here is pure and works on ``frozenset`` of CPU numbers.
"""

from __future__ import annotations

import re

_RANGE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?")
# The kernel's largest NR_CPUS; a cpu-list naming a higher CPU is refused before it is expanded.
MAX_CPUS = 8192
MAX_TEXT = 16384


class CpuListError(ValueError):
    """A cpu-list or mask that the kernel would not accept either."""


def parse_cpulist(text, limit=MAX_CPUS):
    """Parse a kernel cpu-list (``"0-3,8,10-11"``, ``"0-15:2/4"``, ``""``) into a frozenset.

    Accepts ints and iterables of ints as they are, so callers can take user input in either form.
    Every CPU number must be below ``limit`` (the node's CPU count where the caller knows it, the
    kernel's largest NR_CPUS otherwise); that is checked before any range is expanded.
    """
    if text is None:
        return frozenset()
    if isinstance(text, bool):
        raise CpuListError("%r is not a cpu-list" % (text,))
    if isinstance(text, int):
        if text < 0:
            raise CpuListError("CPU numbers are not negative: %d" % text)
        if text >= limit:
            raise CpuListError("CPU %d is beyond the last CPU this node can have (%d)" % (text, limit - 1))
        return frozenset([text])
    if not isinstance(text, str):
        cpus = set()
        for item in text:
            cpus |= parse_cpulist(item, limit)
        return frozenset(cpus)
    if len(text) > MAX_TEXT:
        raise CpuListError("a cpu-list of %d characters is longer than any node needs (%d)" % (len(text), MAX_TEXT))
    cpus = set()
    for part in text.replace(" ", "").replace("\n", "").split(","):
        if not part:
            continue
        match = _RANGE.fullmatch(part) if len(part) <= 64 else None
        if not match:
            raise CpuListError("'%s' is not a cpu-list element (expected N, N-M or N-M:used/group)" % part)
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise CpuListError("range '%s' runs backwards" % part)
        if last >= limit:
            raise CpuListError("'%s' names CPU %d, beyond the last CPU this node can have (%d)" % (part, last, limit - 1))
        used = int(match.group(3)) if match.group(3) else 1
        group = int(match.group(4)) if match.group(4) else 1
        if used < 1 or group < 1 or used > group:
            raise CpuListError("stride '%s' needs 1 <= used <= group" % part)
        for cpu in range(first, last + 1):
            if (cpu - first) % group < used:
                cpus.add(cpu)
    return frozenset(cpus)


def format_cpulist(cpus):
    """Format CPUs as the kernel's canonical cpu-list: sorted, ranges of three or more joined."""
    ordered = sorted(set(cpus))
    parts = []
    start = prev = None
    for cpu in ordered:
        if start is None:
            start = prev = cpu
        elif cpu == prev + 1:
            prev = cpu
        else:
            parts.append(_span(start, prev))
            start = prev = cpu
    if start is not None:
        parts.append(_span(start, prev))
    return ",".join(parts)


def _span(first, last):
    if first == last:
        return str(first)
    if last == first + 1:
        return "%d,%d" % (first, last)
    return "%d-%d" % (first, last)


def parse_cpumask(text):
    """Parse a hex mask as in ``/proc/irq/N/smp_affinity`` (``"00000000,0000000f"``)."""
    digits = text.strip().replace(",", "")
    if not digits:
        return frozenset()
    try:
        value = int(digits, 16)
    except ValueError:
        raise CpuListError("'%s' is not a hex CPU mask" % text.strip())
    cpus = set()
    bit = 0
    while value:
        if value & 1:
            cpus.add(bit)
        value >>= 1
        bit += 1
    return frozenset(cpus)


def format_cpumask(cpus, nr_cpus):
    """Format CPUs as a comma-grouped hex mask wide enough for ``nr_cpus`` (32 bits a group)."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    groups = max(1, (max(nr_cpus, 1) + 31) // 32)
    words = ["%08x" % ((value >> (32 * i)) & 0xFFFFFFFF) for i in reversed(range(groups))]
    return ",".join(words)


def cpumap_to_set(cpumap):
    """libvirt's per-CPU boolean tuple (``vcpuPinInfo``, ``emulatorPinInfo``) to a set."""
    return frozenset(i for i, used in enumerate(cpumap) if used)


def set_to_cpumap(cpus, nr_cpus):
    """A set of host CPUs to the boolean tuple libvirt's pin calls take."""
    return tuple(i in cpus for i in range(nr_cpus))
