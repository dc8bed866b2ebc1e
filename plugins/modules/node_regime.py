#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_regime
short_description: Move a whole node to the space-shared, time-shared or mixed regime, live
version_added: 0.1.0
description:
  - One call moves a node to a regime given its partition layout and the placement of its guests,
    without restarting any guest.
  - "The change is one ordered plan: preempt (managed save) the running guests that fit nowhere
    when O(overflow=preempt); lift guests into the target pool (and dedicated guests whose partition
    changes); re-carve partitions, hugepages, IRQ affinities and the machine cgroup; resume guests
    an earlier change preempted where they fit again; drop guests onto their partitions; record the
    regime on the node."
  - Before the first change the plan is written to a journal on the node and the journal is
    updated after every step. A run that was killed part-way is detected by the next run (see
    RV(interrupted_run)), which plans again from the node's real state and converges. No guest is
    destroyed by a regime change.
  - Guests not named in O(guests) keep a partition that survives unchanged, and otherwise go to
    the shared pool; in the C(space_shared) regime there is no pool, so such guests do not fit.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout
  - hpcvirt.regime.guests
  - hpcvirt.regime.attributes
options:
  regime:
    description:
      - C(space_shared) (partitions, no pool beyond housekeeping), C(time_shared) (no partitions) or
        C(mixed) (both). The layout given must amount to it.
    type: str
    required: true
    choices: [space_shared, time_shared, mixed]
  housekeeping:
    description: CPUs kept for the host, libvirtd, emulator and I/O threads and IRQs (cpu-list).
    type: str
    required: true
  guests:
    description:
      - Placement of named guests in the target regime, as for M(hpcvirt.regime.placement).
        Guests not named keep a surviving partition or go to the pool.
    type: list
    elements: dict
    default: []
  overflow:
    description:
      - What to do with running guests that do not fit the target regime. C(fail) refuses the whole
        change before anything moves; C(preempt) saves them to disk (libvirt managed save) and the
        reverse change resumes them.
    type: str
    choices: [fail, preempt]
    default: fail
notes:
  - The regime is recorded in C(/var/lib/hpcvirt/regime.json) and reported by M(hpcvirt.regime.node_info).
  - The journal is C(/var/lib/hpcvirt/journal/node_regime.json) while a change is under way.
seealso:
  - module: hpcvirt.regime.partition
  - module: hpcvirt.regime.placement
  - module: hpcvirt.regime.node_info
"""

EXAMPLES = r"""
- name: Give the node to a bulk-synchronous job (two partitions, guests dropped into them)
  hpcvirt.regime.node_regime:
    regime: space_shared
    housekeeping: "0,64"
    partitions:
      - {name: mpi0, count: 30, numa_nodes: [0], hugepages: {size: 1G, count: 60}}
      - {name: mpi1, count: 32, numa_nodes: [1], hugepages: {size: 1G, count: 60}}
    irq_steering: true
    guests:
      - {name: rank0, placement: dedicated, partition: mpi0}
      - {name: rank1, placement: dedicated, partition: mpi1}
    overflow: preempt

- name: Back to time-sharing; preempted guests come back
  hpcvirt.regime.node_regime:
    regime: time_shared
    housekeeping: "0,64"
"""

RETURN = r"""
regime:
  description: The regime the node is in after the run.
  returned: always
  type: str
plan:
  description: Every step in the order applied (action, target, before, after).
  returned: always
  type: list
  elements: dict
guests:
  description: Per guest, what the change did.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    fate:
      description: C(placed), C(preempted), C(resumed) (and placed), or C(untouched) (stopped and fitting nowhere).
      type: str
    placement:
      description: Mode, partition and CPUs reached, for placed guests.
      type: dict
    live_ms:
      description: Milliseconds the live changes of this guest took.
      type: float
    not_live:
      description: Changes that wait for the guest's next start.
      type: list
      elements: str
layout:
  description: The layout recorded on the node.
  returned: always
  type: dict
exclusivity:
  description: Per partition, whether the kernel holds it exclusive and what blocks it.
  returned: always
  type: dict
reboot_required:
  description: Whether kernel arguments asked for in O(kernel_args) need a reboot.
  returned: always
  type: bool
kernel_args_required:
  description: The exact kernel arguments missing, when RV(reboot_required).
  returned: always
  type: list
  elements: str
interrupted_run:
  description: The journal of an earlier run that was killed part-way (target, steps done), or null.
  returned: always
  type: dict
timings:
  description: Milliseconds per phase (read, plan, preempt, lift, carve, resume, drop, record).
  returned: always
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _regime
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node


@module_main(_regime.module_argument_spec, supports_check_mode=True)
def main(module):
    node = read_node(module, require_cpuset=True)
    change = _regime.RegimeChange(node, module.params)
    change.execute(module.check_mode)
    module.exit_json(**change.result(module.check_mode, module._diff))


if __name__ == "__main__":
    main()
