#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: placement
short_description: Lift running guests into the shared pool or drop them onto dedicated partitions, live
version_added: 0.1.0
description:
  - Moves guests between C(dedicated) placement (each vCPU pinned 1:1 to a CPU of a partition,
    emulator and I/O threads on housekeeping CPUs, no CPU quota, memory on the partition's NUMA
    nodes) and C(shared) placement (every vCPU floats over the node's pool, with C(cpu_shares) and
    C(vcpu_quota)), without restarting them.
  - Plans from the guests' current state as libvirt reports it, then applies the plan live and to
    the persistent configuration (see O(affect)). All vCPUs up to the maximum are pinned, not only
    the online ones.
  - Admission control refuses, naming the guest, the partition and what blocks it, and changes
    nothing, when a drop would put two guests on one dedicated CPU or leave a partition CPU in
    another guest's pins.
  - Records the placement in the guest's hpcvirt metadata so it can be read back (see
    M(hpcvirt.regime.node_info)).
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout.file
  - hpcvirt.regime.guests
  - hpcvirt.regime.attributes
options:
  guests:
    description:
      - Guests to place. Lifts (to C(shared)) are applied before drops (to C(dedicated)), so one
        call can swap which guest owns a partition.
    type: list
    elements: dict
    required: true
  affect:
    description:
      - C(both) changes the running guest and its persistent configuration; C(live) only the
        running guest (lost at its next start); C(config) only the persistent configuration
        (applies at the next start). A stopped guest only has a configuration.
    type: str
    choices: [both, live, config]
    default: both
notes:
  - NUMA memory moves live only for guests whose memory mode is C(restrictive); for others the new
    node set is written to the configuration and reported in RV(guests.not_live).
  - The layout (partitions, pool, housekeeping) is read from the node as
    M(hpcvirt.regime.partition) leaves it; this module does not carve partitions.
seealso:
  - module: hpcvirt.regime.node_info
  - module: hpcvirt.regime.partition
"""

EXAMPLES = r"""
- name: Drop a running MPI enclave onto partition mpi0
  hpcvirt.regime.placement:
    guests:
      - name: mpi-rank0
        placement: dedicated
        partition: mpi0

- name: Lift it back into the pool at half weight, and give its partition to another guest
  hpcvirt.regime.placement:
    guests:
      - name: mpi-rank0
        placement: shared
        cpu_shares: 512
      - name: mpi-rank1
        placement: dedicated
        partition: mpi0
"""

RETURN = r"""
guests:
  description: Per guest, in the order applied.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    changed:
      description: Whether anything changed for this guest.
      type: bool
    placement:
      description: The placement reached (C(mode), C(partition), C(cpus) the vCPUs are pinned to).
      type: dict
    plan:
      description: The steps (action, target, before, after).
      type: list
      elements: dict
    live_ms:
      description: Milliseconds the live change of this guest took (0 in check mode or when nothing changed).
      type: float
    not_live:
      description: Changes that could not be made to the running guest and wait for its next start.
      type: list
      elements: str
plan:
  description: Every step for every guest, in order.
  returned: always
  type: list
  elements: dict
timings:
  description: Milliseconds spent reading the node, planning and applying.
  returned: always
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _placement as placement
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Context, execute


@module_main(placement.module_argument_spec, supports_check_mode=True)
def main(module):
    node = read_node(module, require_cpuset=False)
    plan, results = placement.plan_module(node, module.params)
    ctx = Context(libvirt=lv.libvirt, conn=node.conn, domains=node.domains, ncpus=node.ncpus,
                  affect=module.params["affect"])
    execute(plan, ctx, module.check_mode, node.timings)
    module.exit_json(**placement.module_result(plan, results, node, module._diff))


if __name__ == "__main__":
    main()
