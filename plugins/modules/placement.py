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
attributes:
  check_mode:
    support: full
    description: Returns the same plan a real run applies and changes nothing.
  diff_mode:
    support: full
    description: Shows each pin, scheduler, NUMA and metadata change, before and after.
options:
  guests:
    description:
      - Guests to place. Lifts (to C(shared)) are applied before drops (to C(dedicated)), so one
        call can swap which guest owns a partition.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Domain name.
        type: str
        required: true
      placement:
        description: C(dedicated) (drop) or C(shared) (lift).
        type: str
        required: true
        choices: [dedicated, shared]
      partition:
        description:
          - For C(dedicated), the partition name, or C(auto) for the partition that fits best on the
            guest's NUMA node (a guest already inside a partition stays there).
        type: str
        default: auto
      cpu_shares:
        description: For C(shared), the guest's CPU weight (2..262144). Unset leaves it as it is.
        type: int
      vcpu_quota:
        description:
          - For C(shared), the CPU time each vCPU may use per period, in microseconds, or -1 for no
            limit. Unset leaves it as it is.
        type: int
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import (
    NodeStateError,
    read_guests,
    read_node_state,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import (
    PlacementError,
    apply_guest_plan,
    guests_argument_spec,
    plan_placements,
    requests_from_params,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan, Timings


def main():
    argument_spec = lv.libvirt_argument_spec()
    argument_spec.update(
        guests=dict(guests_argument_spec(), required=True),
        affect=dict(type="str", default="both", choices=["both", "live", "config"]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    lv.require_libraries(module, need_lxml=False)

    try:
        topology, _cgroups, layout, _regime, timings = read_node_state()
    except NodeStateError as exc:
        module.fail_json(msg=str(exc))
    conn = lv.open_connection(module)
    ncpus = lv.host_cpu_count(conn)
    partitions = {p["name"]: p for p in layout["partitions"]}
    pool = parse_cpulist(layout["pool"])

    requests = requests_from_params(module.params["guests"])

    with lv.libvirt_errors(module, "reading guests"):
        with timings.measure("read"):
            domains = {dom.name(): dom for dom in conn.listAllDomains(0)}
            guests = read_guests(lv.libvirt, domains.values(), partitions, pool, lv.DOMAIN_STATES)
    try:
        with timings.measure("plan"):
            planned = plan_placements(layout, guests, requests, topology)
    except PlacementError as exc:
        module.fail_json(msg=str(exc))

    whole = Plan()
    results = []
    for name, (plan, want) in planned.items():
        whole.extend(plan)
        results.append({
            "name": name,
            "changed": plan.changed,
            "placement": {"mode": want["mode"], "partition": want["partition"],
                          "cpus": format_cpulist(frozenset().union(*want["vcpu_pins"]))},
            "plan": plan.to_list(),
            "live_ms": 0.0,
            "not_live": [],
        })

    if whole.changed and not module.check_mode:
        for result in results:
            plan = planned[result["name"]][0]
            if not plan:
                continue
            guest_timings = Timings()
            try:
                result["not_live"] = apply_guest_plan(lv.libvirt, domains[result["name"]], plan,
                                                      module.params["affect"], ncpus, guest_timings)
            except lv.libvirt.libvirtError as exc:
                module.fail_json(
                    msg="guest '%s': %s. Steps before it were applied; run again to converge."
                        % (result["name"], lv.error_text(exc)),
                    guests=results, plan=whole.to_list())
            result["live_ms"] = round(sum(guest_timings.to_dict().values()), 3)
            timings.add("apply", result["live_ms"])

    module.exit_json(
        changed=whole.changed,
        guests=results,
        plan=whole.to_list(),
        diff=whole.diff("placement") if module._diff else None,
        timings=timings.to_dict(),
    )


if __name__ == "__main__":
    main()
