#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vse
short_description: Virtual System Environments - guests built from layered specs and master images
version_added: 0.1.0
description:
  - Builds a libvirt guest from a Virtual System Environment (VSE), a description of the VM a
    user's work needs assembled from ordered layers (vendor or distribution base, site, node group,
    user, instance).
  - Merges O(layers) (later layers override earlier ones; C(key+) adds to a list, C(key-) removes
    list elements or, with C(null), the key), validates the result, places the guest (C(dedicated)
    vCPUs pinned 1:1 in a partition with emulator threads on housekeeping CPUs, or C(shared) over
    the pool with C(cpu_shares)/C(vcpu_quota)), allocates its addresses, creates a copy-on-write
    qcow2 overlay of each master image through libvirt's storage API, and defines the domain.
  - Idempotent by a semantic comparison of the fields the VSE owns; what libvirt fills in
    (addresses, aliases, default controllers, expanded machine types) is ignored.
  - A change a running guest cannot take live is written to its persistent configuration and
    reported as RV(restart_required); the guest is never restarted unasked. Scheduler parameters,
    vCPU and emulator pins, memory tunables and metadata are applied live as well.
  - The guest's intent (VSE name, digest, layers, placement, addresses, overlays) is kept in the
    domain's C(<metadata>) (namespace C(https://hpcvirt.dev/xmlns/regime/1)), where
    M(hpcvirt.regime.node_info) and later runs read it back.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout.file
  - hpcvirt.regime.attributes
options:
  name:
    description:
      - Name of the libvirt domain (the instance). The VSE's own C(name) defaults to it.
    type: str
    required: true
  state:
    description:
      - C(present) defines the guest and leaves it running or stopped as it is.
      - C(running) defines and starts it. C(stopped) defines it and stops it (see O(stop_mode)).
      - C(absent) undefines it and deletes its overlays (unless O(keep_disks)); a running guest
        needs O(force=true).
    type: str
    choices: [present, running, stopped, absent]
    default: present
  layers:
    description:
      - Ordered layers, each C({name, spec}). Later layers override earlier ones.
      - The keys of a spec are described in the notes and in C(docs/vse.md). An unknown key is an
        error naming the key and the layer.
      - "Merge syntax inside a spec: C(key: value) sets (dicts merge, lists and scalars are replaced);
        C(key+: [items]) adds to a list (C(disks) merge by C(dev), C(networks) by C(name));
        C(key-: [items]) removes list elements (identities in the keyed lists); C(key-: null)
        removes the key."
    type: list
    elements: dict
    default: []
  spec:
    description:
      - A last layer, named C(spec), applied after O(layers).
    type: dict
  keep_disks:
    description:
      - With O(state=absent), keep the overlay volumes.
    type: bool
    default: false
  force:
    description:
      - With O(state=absent), destroy a running guest before removing it.
    type: bool
    default: false
  stop_mode:
    description:
      - How O(state=stopped) stops a running guest. C(shutdown) asks the guest (ACPI) and powers it
        off after O(shutdown_timeout) seconds; C(destroy) powers it off at once.
    type: str
    choices: [shutdown, destroy]
    default: shutdown
  shutdown_timeout:
    description:
      - Seconds to wait for a guest to shut down before it is powered off.
    type: int
    default: 60
notes:
  - "VSE keys: C(name); C(domain_type) (C(kvm) default, C(qemu)); C(vcpus); C(memory) (MiB, at
    least 64); C(hugepages) (C(2M) or C(1G)); C(memory_locked); C(boot) (C(kernel), C(initrd),
    C(cmdline) with C({name}), C({hostname}), C({ip}), C({vse}) filled in, or C(dev) for disk boot);
    C(disks) (C(dev) with C(master) for a per-instance overlay, or C(volume) for a plain volume;
    C(pool), C(pool_dir), C(size) MiB, C(bus), C(format), C(readonly)); C(networks) (C(name), one of
    C(network), C(bridge) or C(type=user); C(mac), C(ip) or C(ip_range), C(prefix), C(hostname),
    C(model)); C(placement) (C(mode) C(dedicated) with C(partition) (a name or C(auto)), or
    C(shared) with C(cpu_shares), C(vcpu_quota), C(vcpu_period)); C(emulator.cpus); C(numa)
    (C(mode), C(nodeset)); C(allowed_users); C(limits) (C(cpu_quota), C(cpu_period),
    C(memory_hard_limit), C(memory_soft_limit) MiB); C(console.path); C(metadata) (flat mapping)."
  - IPs from C(ip_range) are deterministic for the instance name and never one that another hpcvirt
    guest on the node holds; MACs derive from the name. IPs reach the guest through the kernel
    command line (C({ip})); DHCP reservations in a libvirt network are not made.
seealso:
  - name: Virtual System Environments
    description: Schema, layering and examples (docs/vse.md in the collection).
    link: https://github.com/hpcvirt/regime/blob/main/docs/vse.md
  - module: hpcvirt.regime.node_info
"""

EXAMPLES = r"""
- name: Two layers and an instance override, started
  hpcvirt.regime.vse:
    name: mpi-01
    state: running
    layers:
      - name: vendor
        spec:
          domain_type: kvm
          memory: 1024
          boot:
            kernel: /var/lib/hpcvirt/images/hpcvirt-tiny.vmlinuz
            initrd: /var/lib/hpcvirt/images/hpcvirt-tiny.initrd
            cmdline: console=ttyS0 hpcvirt.hostname={hostname} hpcvirt.ip={ip}
          disks:
            - dev: vda
              master: /var/lib/hpcvirt/images/hpcvirt-tiny.qcow2
      - name: site
        spec:
          networks:
            - name: net0
              bridge: br-hpc
              ip_range: 10.10.0.0/24
          placement:
            mode: dedicated
            partition: auto
    spec:
      vcpus: 4
      allowed_users: [alice]

- name: A shared guest with weights, a list element removed by a later layer
  hpcvirt.regime.vse:
    name: svc-01
    layers:
      - name: base
        spec: "{{ vse_layer_vendor }}"
      - name: user
        spec:
          placement:
            mode: shared
            cpu_shares: 512
          networks-: [net1]

- name: Remove a guest and its overlays, even when it runs
  hpcvirt.regime.vse:
    name: svc-01
    state: absent
    force: true
"""

RETURN = r"""
spec:
  description: The merged and validated VSE (defaults filled in).
  returned: unless state is absent
  type: dict
provenance:
  description: For each top-level key of the merged spec, the layer that last set it.
  returned: unless state is absent
  type: dict
  sample: {"memory": "vendor", "placement": "group", "vcpus": "spec"}
digest:
  description: Digest of the merged spec, recorded in the guest's metadata.
  returned: unless state is absent
  type: str
resolved:
  description: Every choice made (pins, emulator CPUs, addresses, MACs, overlay paths, metadata).
  returned: unless state is absent
  type: dict
xml:
  description: The domain XML built from the spec.
  returned: unless state is absent
  type: str
addresses:
  description: IP address per network name.
  returned: unless state is absent
  type: dict
restart_required:
  description: Whether the persistent configuration holds changes the running guest has not taken.
  returned: always
  type: bool
restart_fields:
  description: The fields that differ between the running guest and its configuration.
  returned: always
  type: list
  elements: str
plan:
  description:
    - The steps of the run (or, in check mode, of the run that would happen), in order; C(action) is
      one of C(create_directory), C(create_overlay), C(define), C(set_live), C(start), C(stop),
      C(destroy), C(undefine), C(delete_overlay).
  returned: always
  type: list
  elements: dict
domain_state:
  description: State of the domain after the run (running, shutoff, absent).
  returned: always
  type: str
timings:
  description:
    - Milliseconds per action of the plan that ran (C(create_overlay), C(define), C(set_live), C(start),
      C(stop), C(destroy), C(undefine), C(delete_overlay)), and C(read), reading the node.
  returned: always
  type: dict
  sample: {read: 42.1, create_overlay: 35.2, define: 12.8, start: 160.4}
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _vse as vse
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import StepFailed, Timings, execute


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "running", "stopped", "absent"]),
        layers=dict(type="list", elements="dict", default=[]),
        spec=dict(type="dict"),
        keep_disks=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        stop_mode=dict(type="str", default="shutdown", choices=["shutdown", "destroy"]),
        shutdown_timeout=dict(type="int", default=60),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )
    return spec


@module_main(argument_spec, supports_check_mode=True)
def main(module):
    lv.require_libraries(module)
    params = module.params
    if not 0 <= params["shutdown_timeout"] <= 86400:
        module.fail_json(msg="shutdown_timeout: %d is outside 0..86400 seconds" % params["shutdown_timeout"])
    timings = Timings()
    node = read_node(module, libvirt=lv.libvirt, timings=timings)
    plan, ctx, report = vse.plan_vse(node, params, lv.libvirt)
    try:
        execute(plan, ctx, module.check_mode, timings)
    except StepFailed:
        vse.undo_new_overlays(ctx)
        raise
    module.exit_json(changed=plan.changed, plan=plan.to_list(), diff=plan.diff(header=params["name"]),
                     domain_state=vse.domain_state(ctx), timings=timings.to_dict(), **report)


if __name__ == "__main__":
    main()
