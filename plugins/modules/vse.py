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
attributes:
  check_mode:
    support: full
    description: Computes the same plan and reports exactly what a real run would change.
  diff_mode:
    support: full
    description: Shows only the owned fields that differ, per step of the plan.
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
  description: The steps of the run (or, in check mode, of the run that would happen).
  returned: always
  type: list
  elements: dict
domain_state:
  description: State of the domain after the run (running, shutoff, absent).
  returned: always
  type: str
timings:
  description: Milliseconds per live operation.
  returned: always
  type: dict
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import CgroupError, detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist, set_to_cpumap
from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import (
    build_domain_xml,
    compare,
    needs_restart,
    owned_view,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import write_domain_metadata
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan, Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import LAYOUT_FILE, read_json
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology
from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import (
    VseError,
    check_domain_name,
    digest,
    layer_names,
    merge_layers,
    resolve,
    validate,
)

SCHED_KEYS = {"shares": "cpu_shares", "quota": "vcpu_quota", "period": "vcpu_period",
              "global_quota": "global_quota", "global_period": "global_period"}


def read_node(module, conn, name):
    """Partitions, CPUs and what the node's other guests hold (pins, addresses)."""
    topology = read_topology("/")
    try:
        cgroups = detect_layout("/")
        layout_file = read_json("/", LAYOUT_FILE) or {}
    except (CgroupError, ValueError) as exc:
        module.fail_json(msg="node: %s" % exc)
    partitions = {pname: {"cpus": cg.cpus, "mems": cg.mems} for pname, cg in cgroups.partitions().items()}
    taken_cpus, taken_ips = set(), set()
    for dom in conn.listAllDomains(0):
        if dom.name() == name:
            continue
        try:
            views = [owned_view(dom.XMLDesc(lv.libvirt.VIR_DOMAIN_XML_INACTIVE))]
            if dom.isActive():
                views.append(owned_view(dom.XMLDesc(0)))
        except lv.libvirt.libvirtError:
            continue   # a guest that went away (migrated, undefined) while we listed
        for view in views:
            for cpus in view["cputune"]["vcpupin"].values():
                pinned = parse_cpulist(cpus)
                if len(pinned) == 1:
                    taken_cpus |= pinned
            taken_ips |= set((view["metadata"].get("addresses") or {}).values())
    return {
        "partitions": partitions,
        "online": topology.online,
        "housekeeping": parse_cpulist(layout_file.get("housekeeping", "")) & topology.online or None,
        "pool": parse_cpulist(layout_file.get("pool", "")) & topology.online or None,
        "taken_cpus": frozenset(taken_cpus),
        "taken_ips": frozenset(taken_ips),
    }


def merged_spec(module):
    layers = list(module.params["layers"] or [])
    if module.params["spec"] is not None:
        layers.append({"name": "spec", "spec": module.params["spec"]})
    try:
        check_domain_name(module.params["name"])
        spec, provenance = merge_layers(layers)
        spec = validate(spec, provenance, domain_name=module.params["name"])
        return spec, provenance, layer_names(layers)
    except VseError as exc:
        module.fail_json(msg=str(exc))


def check_disks(module, resolved, conn):
    """Masters and plain volumes must exist; returns the overlays that have to be created."""
    missing = []
    for disk in resolved["disks"]:
        if disk.get("master"):
            if not os.path.isfile(disk["master"]):
                module.fail_json(msg="disks (%s).master: master image %s does not exist" % (disk["dev"], disk["master"]))
            if not storage.volume_exists(conn, disk["path"]):
                missing.append(disk)
        elif not os.path.exists(disk["path"]):
            module.fail_json(msg="disks (%s).volume: %s does not exist" % (disk["dev"], disk["path"]))
    for path, what in ((resolved["os"].get("kernel"), "boot.kernel"), (resolved["os"].get("initrd"), "boot.initrd")):
        if path and not os.path.isfile(path):
            module.fail_json(msg="%s: %s does not exist" % (what, path))
    return missing


def is_managed(view):
    return "vse" in (view.get("metadata") or {})


def plan_present(module, conn, dom, resolved, desired_view):
    """The steps that bring the domain's definition (and live state) to ``resolved``."""
    plan = Plan()
    state = module.params["state"]
    console_dir = os.path.dirname(resolved["console_path"])
    if not os.path.isdir(console_dir):
        plan.add("create_directory", console_dir, before=None, after="present")
    for disk in check_disks(module, resolved, conn):
        plan.add("create_overlay", disk["path"], before=None, after={"backing": disk["master"]}, disk=disk)

    restart = []
    active = bool(dom.isActive()) if dom is not None else False
    if dom is None:
        plan.add("define", resolved["name"], before=None, after=desired_view)
    else:
        persistent = compare(desired_view, owned_view(dom.XMLDesc(lv.libvirt.VIR_DOMAIN_XML_INACTIVE)))
        if persistent:
            plan.add("define", resolved["name"], before={f: have for f, have, _unused in persistent},
                     after={f: want for f, _unused, want in persistent})
        if active and state != "stopped":
            live = compare(desired_view, owned_view(dom.XMLDesc(0)))
            restart = needs_restart(live)
            for field, have, want in live:
                if field not in restart:
                    plan.add("set_live", "%s %s" % (resolved["name"], field), before=have, after=want, field=field)

    if state == "running" and not active:
        plan.add("start", resolved["name"], before="shutoff", after="running")
    elif state == "stopped" and active:
        plan.add("stop", resolved["name"], before="running", after="shutoff", mode=module.params["stop_mode"])
    return plan, restart


def apply_present(module, conn, dom, plan, resolved, xml, timings):
    created = []
    try:
        for step in plan:
            if step.action == "create_directory":
                os.makedirs(step.target, exist_ok=True)
            elif step.action == "create_overlay":
                disk = step.detail["disk"]
                with timings.measure("create_overlay"):
                    size = disk["size"] * 1024 * 1024 if disk.get("size") else None
                    storage.create_overlay(conn, disk["pool_dir"], disk.get("pool"), resolved["name"],
                                           disk["dev"], disk["master"], size)
                created.append(disk["path"])
            elif step.action == "define":
                with timings.measure("define"):
                    dom = conn.defineXML(xml)
            elif step.action == "set_live":
                with timings.measure("set_live"):
                    apply_live(dom, step.detail["field"], step.after, resolved)
            elif step.action == "start":
                with timings.measure("start"):
                    dom.create()
            elif step.action == "stop":
                with timings.measure("stop"):
                    stop(module, dom)
    except lv.libvirt.libvirtError as exc:
        # A guest that never got defined leaves no overlay behind; a defined one keeps its disks.
        if lv.find_domain(conn, resolved["name"]) is None:
            for path in created:
                storage.delete_volume(conn, path)
        module.fail_json(msg="%s %s: %s" % (step.action, step.target, lv.error_text(exc)), plan=plan.to_list())
    return dom


def apply_live(dom, field, value, resolved):
    live = lv.libvirt.VIR_DOMAIN_AFFECT_LIVE
    key = field.split(".", 1)[-1]
    if field == "metadata":
        write_domain_metadata(dom, resolved["metadata"], live)
    elif field == "cputune.vcpupin":
        ncpus = lv.host_cpu_count(dom.connect())
        for vcpu, cpus in (value or {}).items():
            dom.pinVcpuFlags(int(vcpu), set_to_cpumap(parse_cpulist(cpus), ncpus), live)
    elif field == "vcpu_cpuset":
        # the shared pool moved (the partition module changed the layout): follow it live
        ncpus = lv.host_cpu_count(dom.connect())
        cpus = parse_cpulist(value) if value else frozenset(range(ncpus))
        pinned = set((resolved["cputune"].get("vcpupin") or {}).keys())
        for vcpu in range(resolved["vcpus"]):
            if str(vcpu) not in pinned:
                dom.pinVcpuFlags(vcpu, set_to_cpumap(cpus, ncpus), live)
    elif field == "cputune.emulatorpin":
        ncpus = lv.host_cpu_count(dom.connect())
        cpus = parse_cpulist(value) if value else frozenset(range(ncpus))
        dom.pinEmulator(set_to_cpumap(cpus, ncpus), live)
    elif field.startswith("cputune."):
        default = {"shares": 1024, "quota": -1, "global_quota": -1, "period": 100000, "global_period": 100000}
        dom.setSchedulerParametersFlags({SCHED_KEYS[key]: value if value is not None else default[key]}, live)
    elif field.startswith("memtune."):
        unlimited = lv.libvirt.VIR_DOMAIN_MEMORY_PARAM_UNLIMITED
        dom.setMemoryParameters({key: value if value is not None else unlimited}, live)


def stop(module, dom):
    if module.params["stop_mode"] == "shutdown":
        try:
            dom.shutdown()
        except lv.libvirt.libvirtError:
            pass
        deadline = time.monotonic() + module.params["shutdown_timeout"]
        while time.monotonic() < deadline:
            if not dom.isActive():
                return
            time.sleep(0.2)
    if dom.isActive():
        dom.destroy()


def run_absent(module, conn, timings):
    name = module.params["name"]
    dom = lv.find_domain(conn, name)
    plan = Plan()
    if dom is None:
        return plan, "absent"
    view = owned_view(dom.XMLDesc(lv.libvirt.VIR_DOMAIN_XML_INACTIVE))
    if not is_managed(view):
        module.fail_json(msg="name: domain '%s' was not created by hpcvirt.regime.vse (no hpcvirt vse metadata); "
                             "refusing to remove it" % name)
    if dom.isActive():
        if not module.params["force"]:
            module.fail_json(msg="state: domain '%s' is running; set force=true to destroy and remove it" % name)
        plan.add("destroy", name, before="running", after="shutoff")
    plan.add("undefine", name, before="defined", after=None)
    if not module.params["keep_disks"]:
        for dev, path in sorted((view["metadata"].get("overlays") or {}).items()):
            if storage.volume_exists(conn, path):
                plan.add("delete_overlay", path, before="present", after=None, dev=dev)
    if module.check_mode:
        return plan, "absent"
    with lv.libvirt_errors(module, "removing domain '%s'" % name, plan=plan.to_list()):
        for step in plan:
            with timings.measure(step.action):
                if step.action == "destroy":
                    dom.destroy()
                elif step.action == "undefine":
                    flags = (lv.libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                             | lv.libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                             | lv.libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                    dom.undefineFlags(flags)
                elif step.action == "delete_overlay":
                    storage.delete_volume(conn, step.target)
    return plan, "absent"


def domain_state(conn, name):
    dom = lv.find_domain(conn, name)
    if dom is None:
        return "absent"
    return lv.DOMAIN_STATES.get(dom.state()[0], "unknown")


def main():
    argument_spec = lv.libvirt_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "running", "stopped", "absent"]),
        layers=dict(type="list", elements="dict", default=[]),
        spec=dict(type="dict"),
        keep_disks=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        stop_mode=dict(type="str", default="shutdown", choices=["shutdown", "destroy"]),
        shutdown_timeout=dict(type="int", default=60),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    lv.require_libraries(module)
    timings = Timings()
    name = module.params["name"]

    if module.params["state"] == "absent":
        conn = lv.open_connection(module)
        plan, _state = run_absent(module, conn, timings)
        module.exit_json(changed=plan.changed, plan=plan.to_list(), diff=plan.diff(header=name),
                         restart_required=False, restart_fields=[],
                         domain_state="absent" if plan.changed and not module.check_mode else domain_state(conn, name),
                         timings=timings.to_dict())

    spec, provenance, names = merged_spec(module)
    conn = lv.open_connection(module)
    with lv.libvirt_errors(module, "reading the node's guests"):
        dom = lv.find_domain(conn, name)
        current = None
        if dom is not None:
            current = owned_view(dom.XMLDesc(lv.libvirt.VIR_DOMAIN_XML_INACTIVE))
            if not is_managed(current):
                module.fail_json(msg="name: a domain called '%s' already exists and was not created by "
                                     "hpcvirt.regime.vse; choose another name" % name)
        node = read_node(module, conn, name)
    try:
        resolved = resolve(name, spec, node, names, current)
    except VseError as exc:
        module.fail_json(msg=str(exc))
    if dom is not None:
        resolved["uuid"] = dom.UUIDString()
    xml = build_domain_xml(resolved)
    desired_view = owned_view(xml)

    with lv.libvirt_errors(module, "planning domain '%s'" % name):
        plan, restart = plan_present(module, conn, dom, resolved, desired_view)
    if not module.check_mode and plan:
        dom = apply_present(module, conn, dom, plan, resolved, xml, timings)
    module.exit_json(
        changed=plan.changed,
        plan=plan.to_list(),
        diff=plan.diff(header=name),
        spec=spec,
        provenance=provenance,
        digest=digest(spec),
        resolved={k: v for k, v in resolved.items() if k != "uuid"},
        xml=xml,
        addresses=resolved["addresses"],
        restart_required=bool(restart),
        restart_fields=restart,
        domain_state=domain_state(conn, name),
        timings=timings.to_dict(),
    )


if __name__ == "__main__":
    main()
