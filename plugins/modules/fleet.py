#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet
short_description: Fleets - many guests of one VSE from one master image, created all or none
version_added: 0.1.0
description:
  - Creates, grows, shrinks and removes a fleet of guests of one Virtual System Environment (an
    on-demand virtual cluster for a job) on a node, in one module call over one libvirt connection.
  - Every member is the guest M(hpcvirt.regime.vse) would build for the same spec (same layer
    merge, placement, addresses, copy-on-write overlay of the master image, domain XML), with its
    own name, address, hostname and optional override, and C(<hpcvirt:fleet name=... index=...>) in
    its metadata.
  - "All or nothing: the whole request is validated first (member names free, addresses free, master
    images present, room for the overlays in each pool directory, memory for the members to start),
    then overlays are created and domains defined in batches, then members are started with at most
    O(start_concurrency) starts at a time. On any failure the run rolls back exactly what it created
    (domains, redefinitions, started members, overlays, pools) and fails naming the member and the cause."
  - A journal (C(/var/lib/hpcvirt/journal/fleet-<name>.json)) lists everything a run is about to create
    before it creates anything, and is updated after each batch. A run that was killed (SIGKILL, a lost
    node) leaves it behind; the next run of the same fleet completes that work when its request still
    validates, or rolls it back, and then removes the journal.
  - Idempotent. Members that exist and match are kept; members whose definition differs are
    redefined (persistent configuration; a running one is listed in RV(restart_required)); members
    the request no longer names (a smaller O(count)) are removed, highest first, running ones only
    with O(force=true).
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
  - hpcvirt.regime.layout.file
  - hpcvirt.regime.attributes
options:
  name:
    description:
      - Name of the fleet. It tags every member's metadata and names the journal.
    type: str
    required: true
  state:
    description:
      - C(present) makes the fleet's members exist (and the first O(start) run).
      - C(absent) removes every member of the fleet (running ones need O(force=true)).
    type: str
    choices: [present, absent]
    default: present
  pattern:
    description:
      - Member names, in Ansible's inventory range syntax, for example C(job42-[001:200]) or
        C(rack[a:b]-n[1:4]). Commas separate terms; several ranges in one term multiply.
      - The order of the names is the order of the members. A pattern that yields a name twice is an error.
      - Without a pattern the members are C(<name>-001) to C(<name>-<count>).
    type: str
  count:
    description:
      - Number of members. With O(pattern), the first O(count) names of the pattern (an error when the
        pattern yields fewer). Lowering it removes the highest members.
    type: int
  vse:
    description:
      - The fleet's VSE spec (keys as in M(hpcvirt.regime.vse)), applied as the last layer after O(layers).
    type: dict
    aliases: [spec]
  layers:
    description:
      - Ordered VSE layers C({name, spec}), merged as M(hpcvirt.regime.vse) merges them.
    type: list
    elements: dict
    default: []
  addresses:
    description:
      - Per network name, an address range (C(10.1.0.10-10.1.0.209) or C(10.1.0.0/24), netaddr forms).
        Member k gets the range's k-th address. The range must hold at least as many addresses as
        the fleet has members. Without it, a network's C(ip_range) allocates per member as in
        M(hpcvirt.regime.vse).
    type: dict
    default: {}
  hostnames:
    description:
      - A pattern of hostnames (same syntax as O(pattern)); member k gets the k-th. It must yield at
        least as many names as the fleet has members.
    type: str
  overrides:
    description:
      - Per member name, a VSE layer applied after the fleet's spec for that member only.
    type: dict
    default: {}
  start:
    description:
      - How many members run, the lowest-indexed first; C(-1) for all. Members beyond this number are
        left as they are (running ones are not stopped).
    type: int
    default: 0
  start_concurrency:
    description:
      - At most this many members start at once.
    type: int
    default: 4
  batch_size:
    description:
      - Overlays created and domains defined per batch; the journal is written after each batch.
    type: int
    default: 50
  force:
    description:
      - Let the run destroy running members it removes (a smaller O(count), or O(state=absent)).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another fleet run on the node to finish (fleet runs are serialised per node).
    type: int
    default: 300
notes:
  - "Memory admission counts only the members this run starts: each needs its memory plus 64 MiB for
    QEMU, against the node's C(MemAvailable) (hugepage-backed members: free hugepages of their size).
    Defined but stopped guests hold no memory, so they are not counted."
  - "Room for overlays: 256 KiB per new overlay (a qcow2 overlay starts at about 192 KiB) in its pool
    directory, and one inode each. A pool that fills up part-way anyway (another writer) fails the run,
    which is then rolled back."
  - "Addresses are recorded in each member's metadata (as with M(hpcvirt.regime.vse)) and in the
    journal while the run lasts; other hpcvirt guests' addresses are never given out."
  - Fleet runs on one node are serialised by a lock on the journal directory.
seealso:
  - module: hpcvirt.regime.vse
"""

EXAMPLES = r"""
- name: A 200-guest virtual cluster for job 42, four of them started
  hpcvirt.regime.fleet:
    name: job42
    pattern: job42-[001:200]
    layers:
      - name: vendor
        spec: "{{ vse_layer_vendor }}"
      - name: site
        spec: "{{ vse_layer_site }}"
    vse:
      memory: 256
    addresses:
      net0: 10.77.1.0/24
    hostnames: n[001:200].job42.cluster
    overrides:
      job42-001:
        memory: 1024
    start: 4
    start_concurrency: 2

- name: Shrink it to 100 members (the highest go, running ones destroyed)
  hpcvirt.regime.fleet:
    name: job42
    pattern: job42-[001:200]
    count: 100
    layers: "{{ job42_layers }}"
    force: true

- name: Remove the fleet
  hpcvirt.regime.fleet:
    name: job42
    state: absent
    force: true
"""

RETURN = r"""
members:
  description: One entry per member of the request (and per member removed), in member order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Domain name.
      type: str
    index:
      description: Position in the fleet (1-based).
      type: int
    action:
      description: C(create), C(update), C(keep) or C(remove).
      type: str
    state:
      description: Domain state after the run (C(running), C(shutoff), C(absent)).
      type: str
    addresses:
      description: Network name to address.
      type: dict
    hostname:
      description: Hostname given to the guest.
      type: str
  sample:
    - {name: job42-001, index: 1, action: create, state: running, addresses: {net0: 10.77.1.1}, hostname: n001}
counts:
  description: Number of members per action, and of members started.
  returned: always
  type: dict
  sample: {create: 200, update: 0, keep: 0, remove: 0, start: 4}
plan:
  description:
    - The steps of the run (or, in check mode, of the run that would happen), one per batch of
      O(batch_size) members, in the order they are executed. C(action) is one of
      C(complete_interrupted_run), C(rollback_interrupted_run), C(create_pool), C(create_overlays),
      C(redefine), C(define), C(start), C(remove), and the roll-back steps C(rollback_stop),
      C(rollback_undefine), C(rollback_restore), C(rollback_delete_overlays), C(rollback_remove_pool),
      C(rollback_remove_directory); C(members) lists the batch's members.
  returned: always
  type: list
  elements: dict
restart_required:
  description: Running members whose persistent definition changed; the change applies at their next start.
  returned: always
  type: list
  elements: str
recovered:
  description:
    - What was done with the journal of an interrupted run, if there was one (C(action) C(completed)
      or C(rolled_back), C(journal), and for a roll-back what was undone).
  returned: always
  type: dict
journal:
  description: Path of the fleet's journal (present only while a run is interrupted).
  returned: always
  type: str
  sample: /var/lib/hpcvirt/journal/fleet-job42.json
timings:
  description:
    - Milliseconds per phase that ran (C(read), C(validate), C(pools), C(overlays), C(define), C(start),
      C(remove), C(rollback)).
  returned: always
  type: dict
  sample: {read: 95.3, validate: 180.2, overlays: 3120.5, define: 640.1, start: 2100.7}
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _fleet as fleet
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_node
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        pattern=dict(type="str"),
        count=dict(type="int"),
        vse=dict(type="dict", aliases=["spec"]),
        layers=dict(type="list", elements="dict", default=[]),
        addresses=dict(type="dict", default={}),
        hostnames=dict(type="str"),
        overrides=dict(type="dict", default={}),
        start=dict(type="int", default=0),
        start_concurrency=dict(type="int", default=4),
        batch_size=dict(type="int", default=50),
        force=dict(type="bool", default=False),
        lock_timeout=dict(type="int", default=300),
        layout_file=dict(type="path", default="/etc/hpcvirt/layout.json"),
    )
    return spec


@module_main(argument_spec, supports_check_mode=True)
def main(module):
    lv.require_libraries(module)
    params = fleet.check_params(module.params)
    timings = Timings()
    node = read_node(module, guests=False, libvirt=lv.libvirt, timings=timings)
    with fleet.node_lock(node, params, module.check_mode):
        with timings.measure("read"):   # under the lock: no other change runs between reading and acting
            node.read_guests(lv.libvirt)
        run = fleet.plan_fleet(node, params, lv.libvirt, timings)
        fleet.apply(run, module.check_mode, timings)
    module.exit_json(changed=run.plan.changed, plan=run.plan.to_list(),
                     diff=run.plan.diff(header="fleet %s" % params["name"]), timings=timings.to_dict(),
                     **fleet.report(run))


if __name__ == "__main__":
    main()
