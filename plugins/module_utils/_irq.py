# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IRQ affinity in /proc/irq: read, and which IRQs the kernel lets us move.

Per-CPU interrupts (timer, IPIs) have no /proc/irq directory. Managed interrupts (multi-queue
MSI-X spread by the kernel) do, but refuse a new affinity with EPERM/EIO: they are reported as
unmovable and left alone. ``movable`` learns that by writing an IRQ's current affinity back
unchanged, which moves nothing.
"""

from __future__ import annotations

import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

IRQ_ROOT = "/proc/irq"


def sort_key(irq):
    return (0, int(irq)) if str(irq).isdigit() else (1, str(irq))


def affinity_path(irq, root=IRQ_ROOT):
    return os.path.join(root, str(irq), "smp_affinity_list")


def read_affinities(root=IRQ_ROOT):
    """IRQ number (as a string) -> CPUs it may be delivered to."""
    found = {}
    if not os.path.isdir(root):
        return found
    for entry in os.listdir(root):
        if not entry.isdigit():
            continue
        text = read_text(os.path.join(root, entry), "smp_affinity_list")
        if text is not None:
            found[entry] = parse_cpulist(text)
    return found


def movable(irq, cpus, root=IRQ_ROOT):
    """Whether the kernel accepts a new affinity for ``irq`` (probed by rewriting ``cpus``)."""
    try:
        with open(affinity_path(irq, root), "w") as handle:
            handle.write(format_cpulist(cpus))
        return True
    except OSError:
        return False


def set_affinity(irq, cpus_text, root=IRQ_ROOT):
    """Write an affinity; returns None on success or the kernel's reason."""
    try:
        with open(affinity_path(irq, root), "w") as handle:
            handle.write(cpus_text)
        return None
    except OSError as exc:
        return os.strerror(exc.errno)


def per_cpu_interrupts(root="/"):
    """Names of per-CPU interrupts (LOC, RES, ...) from /proc/interrupts: never steered, reported."""
    text = read_text(root, "proc/interrupts", "") or ""
    names = []
    for line in text.splitlines()[1:]:
        name = line.split(":", 1)[0].strip()
        if name and not name.isdigit():
            names.append(name)
    return names
