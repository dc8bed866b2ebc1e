# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""IRQ affinity in /proc/irq: read, and which IRQs the kernel lets us move.

Per-CPU interrupts (timer, IPIs) have no /proc/irq directory. Managed interrupts (multi-queue
MSI-X spread by the kernel) do, but refuse a new affinity with EPERM/EIO: they are reported as
unmovable and left alone. Nothing here writes to learn that: a refusal met by a real run is
remembered for the rest of the boot (``remember_unmovable``, in /var/lib/hpcvirt/irq-unmovable.json
with the kernel's boot id), so the next plan leaves that IRQ out and check mode never writes.
"""

from __future__ import annotations

import os

from ansible_collections.hpcvirt.regime.plugins.module_utils import _state

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


UNMOVABLE_FILE = "var/lib/hpcvirt/irq-unmovable.json"


def _boot_id(root):
    return (read_text(root, "proc/sys/kernel/random/boot_id", "") or "").strip()


def known_unmovable(root="/"):
    """IRQs a real run of this boot found refusing a new affinity (read only)."""
    try:
        data = _state.read_json(root, UNMOVABLE_FILE)
    except ValueError:
        return set()
    if not isinstance(data, dict) or data.get("boot_id") != _boot_id(root):
        return set()
    return {str(irq) for irq in data.get("irqs", []) if str(irq).isdigit()}


def remember_unmovable(root, irq):
    """Record that ``irq`` refused a new affinity on this boot (called by a real run only)."""
    irqs = known_unmovable(root) | {str(irq)}
    _state.write_json_atomic(root, UNMOVABLE_FILE, {"boot_id": _boot_id(root), "irqs": sorted(irqs, key=sort_key)})


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
