# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The options that describe a node's CPU layout (partition and node_regime share them).
    DOCUMENTATION = r"""
options:
  housekeeping:
    description:
      - CPUs kept for the host, libvirtd, emulator and I/O threads and IRQs (a cpu-list such as
        C(0-1)); must not be empty.
    type: str
  partitions:
    description: The node's partitions (named, exclusive sets of CPUs, NUMA memory nodes and hugepages).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Partition name (letters, digits, C(-), C(_); at most 63 characters).
        type: str
        required: true
      cpus:
        description: Exactly these CPUs (cpu-list). Give O(partitions[].cpus) or O(partitions[].count).
        type: str
      count:
        description:
          - Number of CPUs, picked by topology - whole cores (SMT siblings together), one NUMA node
            where possible (best fit, lowest node first), lowest cores first. A partition that already
            has CPUs satisfying the spec keeps them.
        type: int
      numa_nodes:
        description: NUMA nodes the partition's CPUs must be on, and its memory nodes. Default is the nodes of its CPUs.
        type: list
        elements: int
      hugepages:
        description: Hugepages to reserve for the partition, per NUMA memory node of it.
        type: dict
        suboptions:
          size:
            description: Page size (C(2M), C(1G)).
            type: str
            default: 2M
          count:
            description: Pages per NUMA node.
            type: int
            required: true
      exclusive:
        description: No other partition, the pool or housekeeping may share these CPUs; the kernel enforces it where it can.
        type: bool
        default: true
      isolate:
        description: Ask for scheduler isolation too (v2 C(isolated), v1 C(sched_load_balance=0)).
        type: bool
        default: false
  pool:
    description:
      - CPUs of the shared pool (cpu-list), or C(auto) - every online CPU in neither housekeeping nor a
        partition, or the housekeeping CPUs when none is left.
    type: str
    default: auto
  irq_steering:
    description:
      - Move the affinity of every IRQ that may fire on a partition CPU to the housekeeping CPUs.
        IRQs the kernel will not move (managed, per-CPU) are left alone and reported; a refusal met
        once is remembered for the rest of the boot, so check mode never writes to learn it.
        Original affinities are recorded and restored when steering is turned off or the layout removed.
    type: bool
    default: false
  kernel_args:
    description:
      - Boot arguments the partitions' CPUs should have (C(isolcpus), C(nohz_full), C(rcu_nocbs)).
        Never written to the boot loader - RV(reboot_required) and RV(kernel_args_required) say what
        to add.
    type: list
    elements: str
    choices: [isolcpus, nohz_full, rcu_nocbs]
    default: []
  layout_file:
    description: Where the node's layout is recorded (and read back from).
    type: path
    default: /etc/hpcvirt/layout.json
"""

    # Only the layout file, for modules that read the layout without changing it.
    FILE = r"""
options:
  layout_file:
    description: Where the node's layout is recorded, as M(hpcvirt.regime.partition) writes it.
    type: path
    default: /etc/hpcvirt/layout.json
"""
