#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: migrate
short_description: Live-migrate a guest to another node and place it there
version_added: 0.1.0
description:
  - Moves the running guest O(name) from the node at O(uri) to the node at O(dest_uri) by live
    migration, peer to peer (the source libvirtd talks to the destination libvirtd itself). The
    guest becomes persistent on the destination and is undefined on the source.
  - Before anything moves, the destination must answer and have room for the guest (free memory,
    or free hugepages for a hugepage-backed guest, and shared pool CPUs within the vCPU
    overcommit); otherwise the module fails and nothing changes. Check mode performs exactly this
    verification and reports the plan.
  - On arrival the guest gets the destination's shared placement (O(placement=shared)), the
    collection's one placement policy - every vCPU floats over the destination's pool CPUs, the
    emulator and I/O threads over its housekeeping and pool CPUs (the pool when only O(dest_pool) is
    known), and C(cpu_shares) /
    C(vcpu_quota) come from the options or from the guest's hpcvirt placement metadata. The
    hpcvirt C(migration) metadata records where the guest came from and its home node.
  - A guest already running on the destination (and not on the source) is no change; a stale
    definition left on the source by an interrupted run is removed. A guest that is shut off is
    moved offline (its definition only). A preempted guest (managed save) is refused.
  - When a pre-copy migration fails (the destination daemon dies, the link breaks, O(timeout)),
    libvirt keeps the guest running on the source and the module fails saying so. A post-copy
    migration that fails is recovered (resumed) when libvirt supports it.
  - Returns libvirt's completed job statistics (downtime, total time, data and disk transferred),
    read on the destination.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
attributes:
  check_mode:
    support: full
    description: Connects to both nodes, checks the destination's capacity and returns the plan; moves nothing.
  diff_mode:
    support: full
    description:
      - The guest on each node before and after (absent, or its state, persistence and placement -
        vCPU pins, emulator pin, scheduler parameters).
options:
  name:
    description: Name of the guest (libvirt domain).
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination node, as both this module and the source libvirtd reach it
        (for example C(qemu+ssh://node2/system), C(qemu+tls://node2/system), or
        C(qemu+unix:///system?socket=PATH) for a second libvirtd on the same machine).
    type: str
    required: true
  migrate_uri:
    description:
      - Where the migration data stream goes (libvirt's C(migrate_uri) parameter), for example
        C(tcp://node2-hsn:49152) to use a high-speed network, or C(unix:///run/mig/x.sock).
      - Default lets libvirt pick (TCP to the destination's host name). Exclusive with O(socket_dir).
    type: str
  socket_dir:
    description:
      - Migrate over UNIX sockets named after the guest in this directory (mode 1777, QEMU runs
        unprivileged), for nodes that share the machine or a file system.
    type: path
  disks:
    description:
      - C(shared) the disks are on storage both nodes see at the same path (nothing copied).
      - C(copy) copy every writable disk to the destination (the destination needs a file, or a
        storage pool volume, of the same path). C(copy_incremental) copies only the top overlay;
        its backing files must exist on the destination.
    type: str
    choices: [shared, copy, copy_incremental]
    default: shared
  copy_disks:
    description: Target names (C(vda)) of the disks to copy; default every writable disk.
    type: list
    elements: str
  disks_uri:
    description: Where the disk copy stream goes (libvirt's C(disks_uri)); default follows O(socket_dir).
    type: str
  unsafe:
    description:
      - Migrate even though libvirt considers the disks unsafe (shared storage on a local file system
        or a cache mode other than C(none)). Only when you know both nodes see the same file.
    type: bool
    default: false
  bandwidth:
    description: Maximum migration bandwidth in MiB/s (0 is libvirt's default, unlimited).
    type: int
    default: 0
  bandwidth_postcopy:
    description: Maximum bandwidth in MiB/s during the post-copy phase.
    type: int
    default: 0
  max_downtime_ms:
    description: Longest pause of the guest QEMU may choose at the switch-over, in ms (0 keeps QEMU's default, 300).
    type: int
    default: 0
  auto_converge:
    description: Throttle the guest's vCPUs when memory is dirtied faster than it is sent.
    type: bool
    default: false
  postcopy:
    description:
      - Allow post-copy. The migration starts as pre-copy and switches to post-copy (the guest runs
        on the destination, fetching the pages it misses) when it does not converge after
        O(postcopy_after_iterations) passes or O(postcopy_after_ms).
      - If the post-copy phase fails, the guest is paused on both nodes; the module resumes the
        migration (libvirt's post-copy recovery) up to O(postcopy_recover_attempts) times.
    type: bool
    default: false
  postcopy_after_iterations:
    description: Switch to post-copy after this many passes over memory (0 never by passes).
    type: int
    default: 3
  postcopy_after_ms:
    description: Switch to post-copy after this many ms (0 never by time).
    type: int
    default: 10000
  postcopy_recover_attempts:
    description: How often to resume a failed post-copy migration before giving up.
    type: int
    default: 3
  timeout:
    description:
      - Abort a pre-copy migration that has not finished after this many seconds; the guest stays
        on the source (0 waits for ever). With O(postcopy) the switch to post-copy comes first.
    type: int
    default: 600
  placement:
    description:
      - C(shared) pins every vCPU and the emulator threads to the destination's pool on arrival.
      - C(keep) leaves the pinning the guest brought with it.
    type: str
    choices: [shared, keep]
    default: shared
  dest_pool:
    description:
      - The destination's shared pool CPUs as a cpu-list (C(layout.pool) of M(hpcvirt.regime.node_info)
        run on the destination). Default is every online CPU the destination's libvirt reports,
        which is the pool of a node that was never carved into partitions.
    type: str
  cpu_shares:
    description: cpu_shares to set on arrival; default from the guest's hpcvirt placement metadata, else unchanged.
    type: int
  vcpu_quota:
    description: vcpu_quota (microseconds per period, -1 unlimited) to set on arrival; default as O(cpu_shares).
    type: int
  reserve_memory_mb:
    description: Memory that must stay free on the destination after the guest arrived, in MiB.
    type: int
    default: 256
  vcpu_overcommit:
    description:
      - Most vCPUs of running guests per pool CPU the destination may have after arrival (0 no limit).
    type: float
    default: 4.0
notes:
  - The destination's pool cannot be read from the destination's cgroups by a module that runs on
    the source; pass O(dest_pool) from the destination's M(hpcvirt.regime.node_info) (the
    C(evacuate.yml) playbook does) when the destination is carved into partitions.
  - Scheduler parameters need the destination's cpu cgroup controller; where it has none they are
    recorded in the persistent definition only, with a warning.
  - Post-copy recovery needs libvirt >= 8.5 on both nodes (Debian 12 has 9.0).
seealso:
  - module: hpcvirt.regime.checkpoint
  - name: libvirt migration
    description: Transports, flags and parameters of live migration.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Move web-01 to node2 over the cluster network
  hpcvirt.regime.migrate:
    name: web-01
    dest_uri: qemu+ssh://node2/system
    bandwidth: 1000
    max_downtime_ms: 100
    auto_converge: true
  register: moved

- name: Show the downtime the guest saw
  ansible.builtin.debug:
    msg: "{{ moved.stats.downtime_ms }} ms down, {{ moved.stats.total_ms }} ms in all"

- name: Can node3 take web-02? (moves nothing)
  hpcvirt.regime.migrate:
    name: web-02
    dest_uri: qemu+ssh://node3/system
    dest_pool: "{{ hostvars['node3'].node.layout.pool }}"
  check_mode: true

- name: Between two libvirtds of one machine, disks shared, post-copy if it does not converge
  hpcvirt.regime.migrate:
    name: hpcvirt-mig-a
    dest_uri: qemu+unix:///system?socket=/var/lib/hpcvirt/nodes/hpcvirt-node2/run/libvirt-sock
    socket_dir: /var/lib/hpcvirt/nodes/migrate
    unsafe: true
    postcopy: true
"""

RETURN = r"""
action:
  description: What was (or in check mode would be) done.
  returned: always
  type: str
  sample: migrate
  choices: [migrate, migrate_offline, finish, arrived]
plan:
  description:
    - The steps, in order (C(migrate), C(undefine_source), C(place), C(record)); C(record) writes the
      hpcvirt C(migration) and C(placement) metadata on the destination.
    - A run killed part-way is converged by the next run with the same options (the guest then is
      on the destination, C(action=arrived), and only the missing steps are planned).
  returned: always
  type: list
  elements: dict
source:
  description: URI and host name of the source node.
  returned: always
  type: dict
destination:
  description: URI, host name, free memory (MiB), pool CPUs (and where they were read from) and running vCPUs of the destination.
  returned: always
  type: dict
need:
  description: Memory (KiB), vCPUs and hugepages the guest needs.
  returned: when the guest was found on the source
  type: dict
capacity_problems:
  description: Why the destination cannot take the guest (empty when it can).
  returned: always
  type: list
  elements: str
flags:
  description: VIR_MIGRATE_* flags used.
  returned: when the guest moves
  type: list
  elements: str
stats:
  description: Completed job statistics read on the destination, in ms and bytes.
  returned: when the guest moved live
  type: dict
  sample: {"downtime_ms": 65, "total_ms": 1210, "setup_ms": 0, "data_transferred_bytes": 92692434,
           "disk_transferred_bytes": 0, "memory_iterations": 4}
stats_raw:
  description: The statistics as libvirt returned them.
  returned: when the guest moved live
  type: dict
postcopy:
  description: Whether post-copy was started and whether a failed post-copy was recovered.
  returned: when the guest moved live
  type: dict
placement:
  description: The desired placement on the destination and the changes applied ({what - [before, after]}).
  returned: always
  type: dict
timings:
  description: Milliseconds per operation (connect, read of both nodes, migrate including the statistics read, undefine_source, place, record).
  returned: always
  type: dict
metadata:
  description: The hpcvirt metadata written on the destination (C(migration) hop and home, C(placement)).
  returned: when the metadata was written
  type: dict
window:
  description:
    - When the migration job started and ended, in seconds since the epoch (the controller can
      check how many migrations overlapped, for example under a concurrency limit).
  returned: when the guest moved or a migration was attempted
  type: dict
  sample: {"start": 1732361230.52, "end": 1732361232.11}
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils import _migrate as mg
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        dest_uri=dict(type="str", required=True),
        migrate_uri=dict(type="str"),
        socket_dir=dict(type="path"),
        disks=dict(type="str", choices=list(mg.DISK_MODES), default="shared"),
        copy_disks=dict(type="list", elements="str"),
        disks_uri=dict(type="str"),
        unsafe=dict(type="bool", default=False),
        bandwidth=dict(type="int", default=0),
        bandwidth_postcopy=dict(type="int", default=0),
        max_downtime_ms=dict(type="int", default=0),
        auto_converge=dict(type="bool", default=False),
        postcopy=dict(type="bool", default=False),
        postcopy_after_iterations=dict(type="int", default=3),
        postcopy_after_ms=dict(type="int", default=10000),
        postcopy_recover_attempts=dict(type="int", default=3),
        timeout=dict(type="int", default=600),
        placement=dict(type="str", choices=list(mg.PLACEMENTS), default="shared"),
        dest_pool=dict(type="str"),
        cpu_shares=dict(type="int"),
        vcpu_quota=dict(type="int"),
        reserve_memory_mb=dict(type="int", default=256),
        vcpu_overcommit=dict(type="float", default=4.0),
    )
    return spec


@module_main(argument_spec, supports_check_mode=True)
def main(module):
    timings = Timings()
    with timings.measure("connect"):
        source_conn = lv.open_connection(module, module.params["uri"])
        dest_conn = lv.open_connection(module, module.params["dest_uri"])
    result = mg.converge(lv.libvirt, source_conn, dest_conn, module.params, module.check_mode, timings)
    for warning in result.pop("warnings"):
        module.warn(warning)
    if not module._diff:
        result.pop("diff")
    module.exit_json(timings=timings.to_dict(), **result)


if __name__ == "__main__":
    main()
