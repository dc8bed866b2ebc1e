#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: await_job
short_description: Wait for a long hpcvirt job started with async, printing its progress as it goes
version_added: 0.1.0
description:
  - Waits for an C(async) job (started with C(poll=0)) of M(hpcvirt.regime.node_regime),
    M(hpcvirt.regime.fleet) or any other module, and prints a progress line every O(interval)
    seconds in the job log (a terminal or AWX) - the step of a regime change (C(step 12 of 40)), the
    phase and counts of a fleet run (overlays, defined, members running), the time elapsed.
  - Progress is read on the node from the journal the job keeps
    (C(/var/lib/hpcvirt/journal/node_regime.json), C(/var/lib/hpcvirt/journal/fleet-NAME.json)) and,
    for members being started, from libvirt.
  - The task's result is the job's own result (as M(ansible.builtin.async_status) returns it once
    finished), so C(register) and failure handling work as if the job had run in the foreground;
    the job's status file is removed.
  - The remote half reads only; the action on the controller does the waiting.
author:
  - hpcvirt.regime developers (@hpcvirt)
attributes:
  check_mode:
    support: full
    description: Reads only; waits for the job as in a real run.
  diff_mode:
    support: none
    description: Nothing changes.
  action:
    support: full
    description: The waiting and printing run on the controller.
  async:
    support: none
    description: It is the waiting for an async job.
options:
  jid:
    description: The C(ansible_job_id) the async task registered.
    type: str
    required: true
  kind:
    description:
      - Which journal tells the progress - C(node_regime), C(fleet) (with O(name)), or C(none)
        (time elapsed only).
    type: str
    choices: [node_regime, fleet, none]
    default: none
  name:
    description: The fleet, for O(kind=fleet).
    type: str
  label:
    description: What the job does, for the progress lines (C(move to space_shared)).
    type: str
    default: job
  interval:
    description: Seconds between progress lines (1 to 600).
    type: int
    default: 5
  poll:
    description: Seconds between looks at the job (1 to 60).
    type: int
    default: 1
  timeout:
    description: Seconds to wait before giving up (the job goes on running on the node), 1 to 86400.
    type: int
    default: 3600
  uri:
    description: libvirt URI, to count the started members of a fleet.
    type: str
    default: qemu:///system
"""

EXAMPLES = r"""
- name: Start the move to space_shared
  hpcvirt.regime.node_regime:
    regime: space_shared
    housekeeping: "0"
  async: 3600
  poll: 0
  register: __job

- name: Move the node to space_shared
  hpcvirt.regime.await_job:
    jid: "{{ __job.ansible_job_id }}"
    kind: node_regime
    label: move to space_shared
  register: regime_result
"""

RETURN = r"""
progress:
  description: The remote half's reading - C(phase), C(done), C(total) (null where unknown) and C(text).
  returned: from the remote half only
  type: dict
  sample: {"phase": "step", "done": 12, "total": 40, "text": "step 12 of 40 done; next: drop demo-1"}
elapsed_s:
  description: Seconds the action waited.
  returned: always
  type: float
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

JOURNAL_DIR = "/var/lib/hpcvirt/journal"
FLEET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
JID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_JOURNAL_BYTES = 64 * 1024 * 1024


def read_journal(path):
    import json
    try:
        if os.path.getsize(path) > MAX_JOURNAL_BYTES:
            return None
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def regime_progress(data):
    if not isinstance(data, dict):
        return {"phase": "planning", "done": None, "total": None, "text": "planning, or finishing (no journal)"}
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    done = data.get("done") if isinstance(data.get("done"), int) else 0
    text = "step %d of %d done" % (done, len(steps))
    if done < len(steps):
        nxt = str(steps[done])
        text += "; next: %s" % (nxt[:117] + "..." if len(nxt) > 120 else nxt)
    return {"phase": "steps", "done": done, "total": len(steps), "text": text}


def fleet_progress(data, running):
    if not isinstance(data, dict):
        return {"phase": "validating", "done": None, "total": None, "text": "validating, or finishing (no journal)"}
    phase = str(data.get("phase", "planned"))
    progress = data.get("progress") if isinstance(data.get("progress"), dict) else {}
    parts = []
    if progress.get("overlays") is not None:
        parts.append("%s overlays created" % progress["overlays"])
    if progress.get("defined") is not None:
        parts.append("%s members defined" % progress["defined"])
    started = data.get("started_members") if isinstance(data.get("started_members"), list) else []
    done, total = progress.get("defined"), None
    if phase == "start" and started:
        total = len(started)
        done = running if running is not None else progress.get("started", 0)
        parts.append("%s of %d running" % (done, total))
    return {"phase": phase, "done": done, "total": total,
            "text": "%s: %s" % (phase, ", ".join(parts) if parts else "under way")}


def count_running(uri, names):
    try:
        import libvirt
    except ImportError:
        return None
    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError:
        return None
    try:
        running = 0
        for name in names:
            try:
                running += 1 if conn.lookupByName(str(name)).isActive() else 0
            except libvirt.libvirtError:
                pass
        return running
    finally:
        conn.close()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            jid=dict(type="str", required=True),
            kind=dict(type="str", choices=["node_regime", "fleet", "none"], default="none"),
            name=dict(type="str"),
            label=dict(type="str", default="job"),
            interval=dict(type="int", default=5),
            poll=dict(type="int", default=1),
            timeout=dict(type="int", default=3600),
            uri=dict(type="str", default="qemu:///system"),
        ),
        required_if=[("kind", "fleet", ["name"])],
        supports_check_mode=True,
    )
    params = module.params
    if not JID.fullmatch(params["jid"]):
        module.fail_json(msg="jid: %r is not an async job id" % params["jid"])
    if params["kind"] == "fleet" and not FLEET_NAME.fullmatch(params["name"]):
        module.fail_json(msg="name: %r is not a fleet name (letters, digits, _ . -, at most 64)" % params["name"])
    if params["kind"] == "node_regime":
        progress = regime_progress(read_journal(os.path.join(JOURNAL_DIR, "node_regime.json")))
    elif params["kind"] == "fleet":
        data = read_journal(os.path.join(JOURNAL_DIR, "fleet-%s.json" % params["name"]))
        running = None
        if isinstance(data, dict) and data.get("phase") == "start" and isinstance(data.get("started_members"), list):
            running = count_running(params["uri"], data["started_members"][:10000])
        progress = fleet_progress(data, running)
    else:
        progress = {"phase": "running", "done": None, "total": None, "text": "running"}
    module.exit_json(changed=False, progress=progress)


if __name__ == "__main__":
    main()
