# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The node's hardware as the kernel shows it.

Reads ``/sys/devices/system/{cpu,node}``, ``/sys/kernel/mm/hugepages``, ``/proc/meminfo`` and
``/proc/cmdline`` below a root path, so unit tests run against recorded trees. Nothing here writes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"
HUGEPAGES_DIR = "sys/kernel/mm/hugepages"


def read_text(root, relpath, default=None):
    """Contents of ``root/relpath`` stripped, or ``default`` when the file does not exist."""
    try:
        with open(os.path.join(root, relpath), "r") as handle:
            return handle.read().strip()
    except (FileNotFoundError, NotADirectoryError):
        return default


def _read_int(root, relpath, default=0):
    text = read_text(root, relpath)
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


@dataclass
class Cpu:
    id: int
    core: int
    socket: int
    node: int
    siblings: frozenset

    def to_dict(self):
        return {"id": self.id, "core": self.core, "socket": self.socket, "node": self.node,
                "siblings": format_cpulist(self.siblings)}


@dataclass
class HugepagePool:
    size_kb: int
    total: int
    free: int
    surplus: int = 0
    reserved: int = 0

    def to_dict(self):
        return {"size_kb": self.size_kb, "total": self.total, "free": self.free,
                "surplus": self.surplus, "reserved": self.reserved}


@dataclass
class NumaNode:
    id: int
    cpus: frozenset
    mem_total_kb: int
    mem_free_kb: int
    hugepages: dict = field(default_factory=dict)   # size_kb -> HugepagePool

    def to_dict(self):
        return {"id": self.id, "cpus": format_cpulist(self.cpus),
                "mem_total_kb": self.mem_total_kb, "mem_free_kb": self.mem_free_kb,
                "hugepages": {str(k): v.to_dict() for k, v in sorted(self.hugepages.items())}}


@dataclass
class KernelCmdline:
    raw: str
    isolcpus: frozenset
    isolcpus_flags: tuple
    nohz_full: frozenset
    rcu_nocbs: frozenset
    default_hugepagesz_kb: int
    hugepages: dict          # size_kb -> count asked on the command line

    def to_dict(self):
        return {"raw": self.raw, "isolcpus": format_cpulist(self.isolcpus),
                "isolcpus_flags": list(self.isolcpus_flags),
                "nohz_full": format_cpulist(self.nohz_full),
                "rcu_nocbs": format_cpulist(self.rcu_nocbs),
                "default_hugepagesz_kb": self.default_hugepagesz_kb,
                "hugepages": {str(k): v for k, v in sorted(self.hugepages.items())}}


@dataclass
class Topology:
    online: frozenset
    possible: frozenset
    cpus: dict               # id -> Cpu, online CPUs only
    nodes: dict              # id -> NumaNode
    hugepages: dict          # size_kb -> HugepagePool (whole node)
    default_hugepage_kb: int
    mem_total_kb: int
    mem_available_kb: int
    cmdline: KernelCmdline

    @property
    def sockets(self):
        return sorted({cpu.socket for cpu in self.cpus.values()})

    def cores(self):
        """Physical cores as sorted tuples of their online SMT siblings, in CPU order."""
        seen = {}
        for cpu in sorted(self.cpus.values(), key=lambda c: c.id):
            key = tuple(sorted(cpu.siblings & self.online)) or (cpu.id,)
            seen.setdefault(key, None)
        return list(seen)

    def node_of(self, cpu):
        return self.cpus[cpu].node if cpu in self.cpus else None

    def nodes_of(self, cpus):
        return frozenset(self.cpus[c].node for c in cpus if c in self.cpus)

    @property
    def smt(self):
        return any(len(cpu.siblings) > 1 for cpu in self.cpus.values())

    def to_dict(self):
        return {
            "online": format_cpulist(self.online),
            "possible": format_cpulist(self.possible),
            "cpu_count": len(self.online),
            "sockets": len(self.sockets),
            "cores": len(self.cores()),
            "threads_per_core": max((len(c) for c in self.cores()), default=1),
            "smt": self.smt,
            "cpus": [self.cpus[i].to_dict() for i in sorted(self.cpus)],
            "numa_nodes": [self.nodes[i].to_dict() for i in sorted(self.nodes)],
            "hugepages": {str(k): v.to_dict() for k, v in sorted(self.hugepages.items())},
            "default_hugepage_kb": self.default_hugepage_kb,
            "mem_total_kb": self.mem_total_kb,
            "mem_available_kb": self.mem_available_kb,
            "cmdline": self.cmdline.to_dict(),
        }


def parse_size_kb(text):
    """Kernel size argument (``2M``, ``1G``, ``2048k``, ``4096``) in KiB; bare numbers are bytes."""
    match = re.match(r"^(\d+)([kKmMgG]?)[bB]?$", text.strip())
    if not match:
        raise ValueError("'%s' is not a size" % text)
    value, unit = int(match.group(1)), match.group(2).lower()
    return {"": value // 1024, "k": value, "m": value * 1024, "g": value * 1024 * 1024}[unit]


def parse_cmdline(text):
    """Parse the isolation and hugepage arguments of a kernel command line."""
    isolcpus, flags, nohz, nocbs = frozenset(), (), frozenset(), frozenset()
    default_kb, hugepages = 0, {}
    current_size = None
    for word in text.split():
        if word == "--":
            break
        key, _sep, value = word.partition("=")
        if key == "isolcpus":
            parts = value.split(",")
            # Leading words that are not CPUs are flags: nohz, domain, managed_irq.
            words = []
            while parts and parts[0] and not parts[0][0].isdigit():
                words.append(parts.pop(0))
            flags = tuple(words)
            isolcpus = parse_cpulist(",".join(parts))
        elif key == "nohz_full":
            nohz = parse_cpulist(value)
        elif key == "rcu_nocbs":
            nocbs = parse_cpulist(value)
        elif key == "default_hugepagesz":
            default_kb = parse_size_kb(value)
        elif key == "hugepagesz":
            current_size = parse_size_kb(value)
        elif key == "hugepages":
            size = current_size or default_kb or 2048
            # "hugepages=0:2,1:2" asks per NUMA node; the total is what counts here.
            total = sum(int(part.split(":")[-1]) for part in value.split(",") if part)
            hugepages[size] = total
    return KernelCmdline(raw=text.strip(), isolcpus=isolcpus, isolcpus_flags=flags, nohz_full=nohz,
                         rcu_nocbs=nocbs, default_hugepagesz_kb=default_kb, hugepages=hugepages)


def _meminfo(text):
    values = {}
    for line in (text or "").splitlines():
        match = re.match(r"^(?:Node \d+ )?(\w+):\s+(\d+)", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def _hugepage_pools(root, relpath):
    pools = {}
    base = os.path.join(root, relpath)
    if not os.path.isdir(base):
        return pools
    for entry in sorted(os.listdir(base)):
        match = re.match(r"^hugepages-(\d+)kB$", entry)
        if not match:
            continue
        size = int(match.group(1))
        sub = os.path.join(relpath, entry)
        pools[size] = HugepagePool(
            size_kb=size,
            total=_read_int(root, os.path.join(sub, "nr_hugepages")),
            free=_read_int(root, os.path.join(sub, "free_hugepages")),
            surplus=_read_int(root, os.path.join(sub, "surplus_hugepages")),
            reserved=_read_int(root, os.path.join(sub, "resv_hugepages")),
        )
    return pools


def read_topology(root="/"):
    """Read the node's CPU, NUMA, memory and hugepage layout below ``root``."""
    online = parse_cpulist(read_text(root, CPU_DIR + "/online", ""))
    possible = parse_cpulist(read_text(root, CPU_DIR + "/possible", "")) or online

    nodes = {}
    node_of = {}
    node_base = os.path.join(root, NODE_DIR)
    node_ids = parse_cpulist(read_text(root, NODE_DIR + "/online", "")) if os.path.isdir(node_base) else frozenset()
    for node_id in sorted(node_ids):
        rel = "%s/node%d" % (NODE_DIR, node_id)
        cpus = parse_cpulist(read_text(root, rel + "/cpulist", "")) & online
        mem = _meminfo(read_text(root, rel + "/meminfo", ""))
        nodes[node_id] = NumaNode(id=node_id, cpus=cpus, mem_total_kb=mem.get("MemTotal", 0),
                                  mem_free_kb=mem.get("MemFree", 0),
                                  hugepages=_hugepage_pools(root, rel + "/hugepages"))
        for cpu in cpus:
            node_of[cpu] = node_id

    meminfo = _meminfo(read_text(root, "proc/meminfo", ""))
    if not nodes:
        # Kernels without NUMA support still have one memory node in practice.
        nodes[0] = NumaNode(id=0, cpus=online, mem_total_kb=meminfo.get("MemTotal", 0),
                            mem_free_kb=meminfo.get("MemFree", 0),
                            hugepages=_hugepage_pools(root, HUGEPAGES_DIR))

    cpus = {}
    for cpu_id in sorted(online):
        rel = "%s/cpu%d/topology" % (CPU_DIR, cpu_id)
        siblings = parse_cpulist(read_text(root, rel + "/thread_siblings_list", str(cpu_id)))
        cpus[cpu_id] = Cpu(id=cpu_id, core=_read_int(root, rel + "/core_id", cpu_id),
                           socket=_read_int(root, rel + "/physical_package_id", 0),
                           node=node_of.get(cpu_id, 0), siblings=siblings)

    return Topology(
        online=online,
        possible=possible,
        cpus=cpus,
        nodes=nodes,
        hugepages=_hugepage_pools(root, HUGEPAGES_DIR),
        default_hugepage_kb=meminfo.get("Hugepagesize", 2048),
        mem_total_kb=meminfo.get("MemTotal", 0),
        mem_available_kb=meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
        cmdline=parse_cmdline(read_text(root, "proc/cmdline", "")),
    )
