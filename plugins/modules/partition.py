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
attributes:
  check_mode:
    support: full
    description: Returns the same RV(plan) a real run applies and changes nothing.
  diff_mode:
    support: full
    description: Shows every file write and hugepage change, before and after, in plan order.
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
  partitions:
    description: Partitions of the node.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Partition name (letters, digits, C(-), C(_)).
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
        IRQs the kernel will not move (managed, per-CPU) are left alone and reported.
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
    description: Where the layout is recorded on the node.
    type: path
    default: /etc/hpcvirt/layout.json
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

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpcvirt.regime.plugins.module_utils import _cgroup_backend as backend
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _partition as part
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import (
    CgroupError,
    detect_layout,
    partition_cgroup_name,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import cpumap_to_set, format_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import read_json
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        machine_cgroup=dict(type="str"),
    )
    spec.update(part.layout_argument_spec())
    return spec


def running_guest_pins(module):
    """vCPU pins of every running guest, to refuse taking a partition's CPUs from under one."""
    conn = lv.open_connection(module)
    pins = {}
    with lv.libvirt_errors(module, "uri: listing running guests"):
        domains = conn.listAllDomains(lv.libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    for dom in domains:
        try:
            pins[dom.name()] = [cpumap_to_set(m) for m in dom.vcpuPinInfo(lv.libvirt.VIR_DOMAIN_AFFECT_LIVE)]
        except lv.libvirt.libvirtError:
            # The guest stopped since it was listed: it is pinned to nothing any more.
            continue
    conn.close()
    return pins


def desired_spec(params, record, topology):
    """The spec to resolve: the task's, or for ``absent`` the recorded one minus the named partitions."""
    if params["state"] == "present":
        return {key: params[key] for key in ("housekeeping", "partitions", "pool", "irq_steering", "kernel_args")}
    names = [p["name"] for p in params["partitions"]]
    if not names or not record:
        return None
    spec = part.record_to_spec(record)
    spec["partitions"] = [p for p in spec["partitions"] if p["name"] not in names]
    if not record.get("pool_auto", False):
        removed = [p["cpus"] for p in record["partitions"] if p["name"] in names]
        spec["pool"] = ",".join([record["pool"]] + removed)
    return spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[("state", "present", ["housekeeping"])],
        supports_check_mode=True,
    )
    lv.require_libraries(module, need_lxml=False)
    params = module.params
    timings = Timings()

    with timings.measure("read"):
        topology = read_topology("/")
        try:
            cgroups = detect_layout("/", machine_name=params["machine_cgroup"])
        except CgroupError as exc:
            module.fail_json(msg="cgroup: %s" % exc)
        if cgroups.cpuset_version is None:
            module.fail_json(msg="cgroup: the cpuset controller is not mounted on this node (neither v1 nor "
                                 "enabled in the v2 root's cgroup.controllers)")
        try:
            record = read_json("/", params["layout_file"].lstrip("/"))
        except ValueError as exc:
            module.fail_json(msg="layout_file: %s" % exc)

    try:
        spec = desired_spec(params, record, topology)
        with timings.measure("read_guests"):
            pins = running_guest_pins(module)
        layout, current = part.prepare(spec, topology, cgroups, record, pins)
    except part.LayoutError as exc:
        module.fail_json(msg=str(exc), changed=False)
    if layout is not None and params["state"] == "present":
        record_auto = params["pool"] in (None, "auto")
    else:
        record_auto = bool(record and record.get("pool_auto"))

    plan, report = part.build_plan(layout, current, params["layout_file"], record_extra={"pool_auto": record_auto})

    reboot_required, kernel_args = part.kernel_args_needed(layout, topology.cmdline) if layout else (False, [])
    result = dict(
        changed=plan.changed,
        plan=plan.to_list(),
        layout=part.layout_to_record(layout) if layout else None,
        exclusivity=report["exclusivity"],
        irq=report["irq"],
        hugepages={s.target: {"before": s.before, "asked": s.after} for s in plan if s.action == "hugepages"},
        reboot_required=reboot_required,
        kernel_args_required=kernel_args,
        cgroup={"version": cgroups.cpuset_version, "machine": cgroups.machine.path,
                "machine_cpus": report["machine_cpus"],
                "machine_held_by_guests": report["machine_held_by_guests"]},
    )
    if module._diff:
        result["diff"] = plan.diff(header="cpu layout of %s" % format_cpulist(topology.online))

    if plan and not module.check_mode:
        try:
            applied = part.apply_plan(plan, timings)
        except part.ApplyError as exc:
            module.fail_json(msg="applying the layout: %s. Steps before it were applied; a re-run "
                                 "converges from here" % exc, plan=plan.to_list(), failed_step=exc.done + 1,
                             timings=timings.to_dict())
        for target, granted in applied["hugepages_granted"].items():
            result["hugepages"][target]["granted"] = granted
        for irq, reason in applied["irq_refused"].items():
            result["irq"]["unmovable"].append(irq)
            result["irq"].setdefault("refused", {})[irq] = reason
    for name, rep in result["exclusivity"].items():
        # What the kernel holds now (v2 may read back "root invalid (reason)"); unknown before a check-mode run applied it.
        applied_now = not module.check_mode or not plan
        rep["kernel_state"] = backend.read_back_state(cgroups.machine.child(partition_cgroup_name(name)).path) if applied_now else None
    result["timings"] = timings.to_dict()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
