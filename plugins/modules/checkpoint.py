#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: checkpoint
short_description: Preempt and resume a guest, and keep external snapshots of it
version_added: 0.1.0
description:
  - C(state=preempted) saves the running guest's memory to disk (libvirt managed save) and stops
    it, freeing its CPUs and memory; C(state=resumed) starts it again from that image, so it goes
    on where it stopped (same boot, its counters continuing).
  - C(state=present) takes a named external snapshot (new overlay files for the disks, and the
    memory in its own file while the guest runs); C(state=absent) deletes it (libvirt merges the
    overlays back; the memory file is removed); C(state=reverted) brings the guest back to it.
  - Every action is recorded in the guest's hpcvirt C(checkpoint) metadata (state, at, reason,
    snapshot), in the persistent definition, so a later run on any controller knows what was done
    and needs no outside state.
  - Idempotent; check mode returns the exact plan.
author:
  - hpcvirt.regime developers (@hpcvirt)
extends_documentation_fragment:
  - hpcvirt.regime.libvirt
attributes:
  check_mode:
    support: full
    description: Returns the plan; changes nothing.
  diff_mode:
    support: full
    description: The guest before and after (state, managed save image, snapshots, checkpoint record).
options:
  name:
    description: Name of the guest (libvirt domain).
    type: str
    required: true
  state:
    description:
      - C(preempted) managed save of a running guest (a guest already saved is no change).
      - C(resumed) start a preempted guest from its saved image (a running guest is no change; a
        shut-off guest without an image is refused, starting it would boot it afresh).
      - C(present), C(absent), C(reverted) the external snapshot O(snapshot).
    type: str
    choices: [preempted, resumed, present, absent, reverted]
    required: true
  snapshot:
    description:
      - Name of the snapshot; required with O(state=present), C(absent) and C(reverted).
      - 1 to 64 letters, digits, C(.), C(_) or C(-), starting with a letter or digit (it becomes part
        of the snapshot's file names).
    type: str
  snapshot_dir:
    description: Directory for a new snapshot's overlays and memory file; default the directory of the guest's first disk.
    type: path
  memory:
    description: Save the memory of a running guest with the snapshot (without it, a disk-only snapshot that cannot be reverted live).
    type: bool
    default: true
  live:
    description: Keep the guest running while its memory is saved (the snapshot then holds the memory of its end).
    type: bool
    default: false
  reason:
    description: Why, recorded in the checkpoint metadata (for example the job that needed the node).
    type: str
  force:
    description: Revert again to the snapshot last reverted to (a revert is otherwise done once).
    type: bool
    default: false
notes:
  - Reverting external snapshots arrived in libvirt 9.7. On an older libvirt (Debian 12 has 9.0,
    which refuses with "revert to external snapshot not supported yet") the module reverts itself
    in the case libvirt 9.7 handles simply - the snapshot has no children and its overlays are the
    guest's current disks. It stops the guest, replaces the overlays by empty ones on the
    snapshot-time images and restores the snapshot's memory image into them. Anything else is
    refused with the reason, and nothing changes.
seealso:
  - module: hpcvirt.regime.migrate
  - name: libvirt snapshots
    description: External snapshots, memory state, and their limits.
    link: https://libvirt.org/kbase/snapshots.html
"""

EXAMPLES = r"""
- name: Preempt web-01 for the MPI job
  hpcvirt.regime.checkpoint:
    name: web-01
    state: preempted
    reason: "slurm job 4711 needs rack-3"

- name: Bring it back where it stopped
  hpcvirt.regime.checkpoint:
    name: web-01
    state: resumed

- name: Snapshot before an upgrade, with memory
  hpcvirt.regime.checkpoint:
    name: web-01
    state: present
    snapshot: before-upgrade

- name: Go back to it
  hpcvirt.regime.checkpoint:
    name: web-01
    state: reverted
    snapshot: before-upgrade
"""

RETURN = r"""
plan:
  description: The steps (preempt, resume, snapshot, delete_snapshot, revert).
  returned: always
  type: list
  elements: dict
guest:
  description: State, managed save image and snapshots of the guest after the run.
  returned: always
  type: dict
checkpoint:
  description: The hpcvirt checkpoint metadata after the run (state, at, reason, snapshot, reverted_to).
  returned: always
  type: dict
files:
  description: Memory image and disk overlays of a snapshot created or deleted.
  returned: when a snapshot was created or deleted
  type: dict
reverted_by:
  description: Who reverted, C(libvirt) or hpcvirt's own revert for libvirt older than 9.7.
  returned: when a snapshot was reverted
  type: str
timings:
  description: Milliseconds per operation.
  returned: always
  type: dict
"""

from ansible_collections.hpcvirt.regime.plugins.module_utils import _checkpoint as ck
from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import module_main


def argument_spec():
    spec = lv.libvirt_argument_spec()
    spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=list(ck.STATES), required=True),
        snapshot=dict(type="str"),
        snapshot_dir=dict(type="path"),
        memory=dict(type="bool", default=True),
        live=dict(type="bool", default=False),
        reason=dict(type="str"),
        force=dict(type="bool", default=False),
    )
    return spec


@module_main(argument_spec, supports_check_mode=True,
             required_if=[("state", s, ("snapshot",)) for s in ck.SNAPSHOT_STATES])
def main(module):
    conn = lv.open_connection(module)
    result = ck.converge(lv.libvirt, conn, module.params, module.check_mode)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
