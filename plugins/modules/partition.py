#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: partition
short_description: Carve a node into housekeeping CPUs, exclusive partitions and a shared pool
version_added: 0.1.0
description:
  - Makes the node's CPU layout what the task declares - housekeeping CPUs for the host, named
    partitions (CPUs, NUMA memory nodes, hugepages) for dedicated guests, and the shared pool that
    time-shared guests float over - live, from the current state, in an order the kernel accepts
    at every step.
  - Partitions are cpuset cgroups named C(hpcvirt-<name>.partition) below libvirt's machine cgroup,
    so a guest pinned into a partition is allowed by its parent. The machine cgroup's CPUs are kept
    a superset of the pool and every partition. cgroup v1 and v2 are chosen from what the node
    mounts.
  - Kernel exclusivity (v1 C(cpu_exclusive), v2 C(cpuset.cpus.partition)) is granted only where the
    kernel accepts it without breaking libvirt; RV(exclusivity) says, per partition, whether it is
    enforced by the kernel or, and why not, by hpcvirt's admission control only.
  - Hugepages are reserved per NUMA node on top of pages others reserved; IRQs can be steered off
    partition CPUs onto housekeeping; kernel boot arguments are reported, never written.
  - The layout is recorded in O(layout_file) for C(hpcvirt.regime.node_info) and the boot-time
    re-apply that role C(hpcvirt.regime.partition) installs.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout
  - hpcvirt.regime.attributes
options:
  state:
    description:
      - C(present) makes the layout exactly the one given; partitions not listed are removed.
      - C(absent) removes the partitions named in O(partitions) (by name), returning their CPUs to
        the pool, or every partition when none is named, restoring the machine cgroup, IRQ
        affinities and hugepages to what they were before hpcvirt carved the node.
    type: str
    choices: [present, absent]
    default: present
  housekeeping:
    description:
      - CPUs kept for the host, libvirtd, emulator threads and IRQs (a cpu-list such as C(0-1)).
        Required with O(state=present); must not be empty.
    type: str
  machine_cgroup:
    description:
      - The cgroup partitions live in, relative to the cpuset hierarchy's root. Default is libvirt's
        machine cgroup (C(machine.slice) or C(machine)). Tests use their own.
    type: str
notes:
  - Taking CPUs from a partition a running guest is pinned to is refused; moving guests is the job
    of the placement module.
seealso:
  - module: hpcvirt.regime.node_info
  - name: cgroup v2 cpuset partitions
    description: The kernel's rules for cpuset.cpus.partition.
    link: https://docs.kernel.org/admin-guide/cgroup-v2.html#cpuset-interface-files
"""

EXAMPLES = r"""
- name: Housekeeping on CPU 0, one partition of one CPU with 2 MiB hugepages
  hpcvirt.regime.partition:
    housekeeping: "0"
    partitions:
      - name: p1
        count: 1
        hugepages: {size: 2M, count: 64}
    irq_steering: true

- name: Space-shared node with two partitions per socket on a 4-NUMA server
  hpcvirt.regime.partition:
    housekeeping: "0,64"
    partitions:
      - {name: n0, count: 30, numa_nodes: [0], hugepages: {size: 1G, count: 16}}
      - {name: n1, count: 32, numa_nodes: [1]}
    kernel_args: [nohz_full, rcu_nocbs]
  register: carved

- name: Remove one partition, its CPUs go back to the pool
  hpcvirt.regime.partition:
    state: absent
    partitions: [{name: n1}]
"""

RETURN = r"""
plan:
  description: Every change in order (action, target, before, after). The same in check mode.
  returned: always
  type: list
  elements: dict
  sample: [{"action": "cgroup_create", "target": "/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition",
            "before": null, "after": "present"}]
layout:
  description: The layout after the run (housekeeping, pool, partitions with their CPUs as cpu-lists).
  returned: always
  type: dict
exclusivity:
  description:
    - Per partition - C(requested), C(enforced) (the kernel holds it), C(kernel_state) read back
      (C(root), C(isolated), C(member), or v2 C(root invalid (reason))), C(blockers) (why the kernel
      cannot hold it) and C(notes).
  returned: always
  type: dict
irq:
  description: IRQs steered, IRQs the kernel would not move (C(unmovable)), per-CPU interrupts left alone.
  returned: always
  type: dict
hugepages:
  description: Pages asked for and granted per nr_hugepages file changed.
  returned: always
  type: dict
reboot_required:
  description: Whether the running kernel lacks boot arguments asked for in O(kernel_args).
  returned: always
  type: bool
kernel_args_required:
  description: The exact boot arguments to add, for the operator or a boot loader role.
  returned: always
  type: list
  elements: str
  sample: ["nohz_full=1", "rcu_nocbs=1"]
cgroup:
  description: cpuset version used (1 or 2) and the machine cgroup.
  returned: always
  type: dict
timings:
  description: Milliseconds per kind of live operation.
  returned: always
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Context, execute


@module_main(part.module_argument_spec, required_if=[("state", "present", ["housekeeping"])],
             supports_check_mode=True)
def main(module):
    node = read_node(module, require_cpuset=True)
    plan, result = part.plan_partition(node, module.params)
    execute(plan, Context(root=node.root), module.check_mode, node.timings)
    module.exit_json(**part.partition_result(node, plan, result, module.check_mode, module._diff))


if __name__ == "__main__":
    main()
