#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: node_info
short_description: Topology, CPU layout, guests and regime of an HPC virtualization node
version_added: 0.1.0
description:
  - Reads the node's hardware topology (online CPUs, SMT siblings, cores, sockets, NUMA nodes with
    their CPUs, memory and hugepage pools), the isolation and hugepage arguments of the kernel
    command line, and the cgroup layout (v1, v2 or hybrid, where the cpuset controller lives, which
    cgroup libvirt places guests in).
  - Reports the CPU layout as found (housekeeping CPUs, partitions, shared pool), every libvirt
    domain with its state, vCPU and emulator pinning, scheduler parameters, memory backing and
    whether it is placed C(dedicated) (pinned 1:1 into a partition) or C(shared) (floating over the
    pool), and the node's regime.
  - Changes nothing on the node.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout.file
  - hpcvirt.regime.attributes.info
options:
  domains:
    description:
      - Report only these domains (by name). Names that do not exist are listed in RV(missing_domains).
      - Default is every domain libvirt knows, running or defined.
    type: list
    elements: str
  include_cpus:
    description:
      - Include the per-CPU topology list (one entry per online CPU) in RV(topology).
    type: bool
    default: true
notes:
  - The regime is the one recorded on the node by the last regime change when there is one,
    otherwise inferred from the layout (no partitions is C(time_shared), no pool is
    C(space_shared), both is C(mixed)); RV(regime.source) says which.
seealso:
  - name: libvirt domain XML, CPU tuning
    description: How vCPU and emulator pinning and scheduler parameters are expressed.
    link: https://libvirt.org/formatdomain.html#cpu-tuning
"""

EXAMPLES = r"""
- name: Read the node
  hpcvirt.regime.node_info:
  register: node

- name: Show each guest's placement
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ item.placement.observed }} on {{ item.vcpu_pins.values() | join(' ') }}"
  loop: "{{ node.domains }}"
  loop_control:
    label: "{{ item.name }}"

- name: Read one guest from a second libvirtd on the same machine
  hpcvirt.regime.node_info:
    uri: qemu+unix:///system?socket=/run/hpcvirt-node2/libvirt/libvirt-sock
    domains: [web-01]
    include_cpus: false
"""

RETURN = r"""
hostname:
  description: Host name of the node as libvirt reports it.
  returned: always
  type: str
libvirt:
  description: Hypervisor and library versions and the URI used.
  returned: always
  type: dict
  sample: {"uri": "qemu:///system", "hypervisor": "QEMU", "hypervisor_version": "7.2.0", "library_version": "9.0.0"}
topology:
  description: Online and possible CPUs, sockets, cores, SMT, NUMA nodes (CPUs, memory, hugepages), kernel command line.
  returned: always
  type: dict
  contains:
    online:
      description: Online CPUs as a cpu-list.
      type: str
      sample: 0-63
    cpu_count:
      description: Number of online CPUs.
      type: int
    sockets:
      description: Number of sockets with online CPUs.
      type: int
    cores:
      description: Number of physical cores with online CPUs.
      type: int
    smt:
      description: Whether any core has more than one online thread.
      type: bool
    cpus:
      description: Per online CPU, its core, socket, NUMA node and SMT siblings. Omitted when O(include_cpus=false).
      type: list
      elements: dict
    numa_nodes:
      description: Per NUMA node, its CPUs, memory in KiB and hugepage pools per page size.
      type: list
      elements: dict
    hugepages:
      description: Node-wide hugepage pools keyed by page size in KiB.
      type: dict
    cmdline:
      description: isolcpus, nohz_full, rcu_nocbs and hugepage arguments of the running kernel.
      type: dict
cgroup:
  description: cgroup mode (v1, v2, hybrid), cpuset version and root, libvirt's machine cgroup.
  returned: always
  type: dict
  sample: {"mode": "hybrid", "cpuset_version": 1, "cpuset_root": "/sys/fs/cgroup/cpuset",
           "machine_cgroup": "/sys/fs/cgroup/cpuset/machine", "machine_cgroup_exists": true, "systemd": false}
layout:
  description: Housekeeping CPUs, partitions and shared pool as found on the node.
  returned: always
  type: dict
  contains:
    housekeeping:
      description: CPUs kept for the host.
      type: str
    pool:
      description: CPUs time-shared guests float over.
      type: str
    partitions:
      description: Partitions found (name, cpus, mems, partition_state, exclusive, cgroup).
      type: list
      elements: dict
    source:
      description: C(layout_file) when read from the layout the partition module recorded,
        C(cgroups) when only partition cgroups were found, C(default) for an uncarved node.
      type: str
domains:
  description: Every reported domain.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    state:
      description: running, paused, shutoff, ...
      type: str
    vcpus:
      description: Current and maximum vCPUs.
      type: dict
    vcpu_pins:
      description: Host CPUs each vCPU may run on (all vCPUs up to the maximum), as cpu-lists keyed by vCPU number.
      type: dict
    emulator_pin:
      description: Host CPUs the emulator threads may run on.
      type: str
    scheduler:
      description: Scheduler parameters (cpu_shares, vcpu_quota, ...).
      type: dict
    memory_backing:
      description: Hugepage sizes and whether memory is locked.
      type: dict
    placement:
      description: C(observed) is C(dedicated), C(shared) or C(custom) from the pins, with the
        partition for dedicated guests; C(intent) is what hpcvirt metadata in the domain asks for.
      type: dict
missing_domains:
  description: Names given in O(domains) that libvirt does not know.
  returned: always
  type: list
  elements: str
regime:
  description: The node's regime and where it was read from (C(recorded) or C(inferred)).
  returned: always
  type: dict
  sample: {"name": "time_shared", "source": "inferred", "recorded_at": null}
  contains:
    name:
      description: C(space_shared), C(time_shared) or C(mixed).
      type: str
    source:
      description: C(recorded) when the last regime change recorded it on the node, C(inferred) from the layout otherwise.
      type: str
    recorded_at:
      description: When the recorded regime was set (ISO 8601), null when inferred.
      type: str
timings:
  description: Milliseconds spent reading each part.
  returned: always
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import node_report, read_node


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        domains=dict(type="list", elements="str"),
        include_cpus=dict(type="bool", default=True),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )
    return spec


@module_main(argument_spec, supports_check_mode=True)
def main(module):
    node = read_node(module)
    module.exit_json(changed=False, **node_report(node, lv, module.params["domains"], module.params["include_cpus"]))


if __name__ == "__main__":
    main()
