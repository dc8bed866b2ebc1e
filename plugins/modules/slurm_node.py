#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: slurm_node
short_description: Drain, resume and set the features of a Slurm node
version_added: 0.1.0
description:
  - Reads a Slurm node's state, drain reason and features with C(scontrol show node -o), and
    drains it, resumes it, or sets its available and active features with C(scontrol update).
  - Drains before any other change and resumes after every other change, so a node never takes a
    job while its features change.
  - Can wait, after draining, until the jobs still running on the node have ended.
  - Runs C(scontrol) on the host the task runs on; that host needs the Slurm client and access
    to the controller (munge).
author:
  - hpcvirt.regime developers (@hpcvirt)
attributes:
  check_mode:
    support: full
    description: Reads the node and reports the plan; changes nothing and does not wait.
  diff_mode:
    support: full
    description: Shows drain state, reason and features before and after.
options:
  name:
    description:
      - Node name as Slurm knows it (C(NodeName)).
    type: str
    required: true
    aliases: [nodename]
  state:
    description:
      - C(drained) sets the drain flag with O(reason); running jobs go on (see O(wait)). A node
        already drained with another reason gets the new reason.
      - C(resumed) clears a drain (or a C(DOWN) state) with C(state=resume). A node that does not
        respond, or whose state Slurm does not know, is never resumed; the module fails instead.
      - Omitted, the drain state is left as it is (read the node, or set features only).
    type: str
    choices: [drained, resumed]
  reason:
    description:
      - Why the node is drained; required with O(state=drained). Compared without the
        C([user@time]) Slurm appends.
    type: str
  wait:
    description:
      - With O(state=drained), wait until no job runs on the node any more (Slurm's C(DRAINED)),
        polling every second, up to O(timeout) seconds; the node stays drained when it fails.
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for running jobs to end with O(wait=true).
    type: int
    default: 600
  available_features:
    description:
      - Exactly these available features (C(AvailableFeatures)); order does not matter. An empty
        list clears them. Omitted, they are left as they are.
    type: list
    elements: str
  active_features:
    description:
      - Exactly these active features (C(ActiveFeatures)); each must be available (after
        O(available_features) is applied). Omitted, they are left as they are.
    type: list
    elements: str
  managed_features:
    description:
      - Manage only these features. O(available_features) and O(active_features) then say which
        of them the node has; features outside this list are kept as found (static features such
        as C(ib)). The slurm role passes C([space_shared, time_shared]).
      - Omitted, O(available_features) and O(active_features) are the exact lists.
    type: list
    elements: str
  slurm_conf:
    description:
      - Path of C(slurm.conf), passed to C(scontrol) as the E(SLURM_CONF) environment variable.
      - Omitted, C(scontrol) finds its configuration as usual (E(SLURM_CONF) of the task's
        environment, configless, or the compiled-in default).
    type: path
  scontrol:
    description:
      - The C(scontrol) program; a bare name is looked up on E(PATH) and in the usual sbin/bin
        directories.
    type: str
    default: scontrol
notes:
  - With the C(node_features/helpers) plugin, slurmd re-reads the active features from the
    helper program whenever it registers; set O(active_features) to what the helper reports
    (hpcvirt's helper reports the node's recorded regime) so both agree.
  - With a node_features plugin (such as C(node_features/helpers)), slurmctld keeps active
    features the plugin does not manage when active features are updated; use
    O(managed_features) so that such static features are not asked to go away.
  - C(scontrol) retries for several seconds before it reports that slurmctld is unreachable.
seealso:
  - name: scontrol(1)
    description: The update command and node states.
    link: https://slurm.schedmd.com/scontrol.html
  - name: hpcvirt.regime Slurm support
    description: Operator set-up, the slurm role's hooks and the node_features helper.
    link: https://github.com/hpcvirt/regime/blob/main/docs/slurm.md
"""

EXAMPLES = r"""
- name: Drain before a regime change, and wait for running jobs to end
  hpcvirt.regime.slurm_node:
    name: "{{ inventory_hostname_short }}"
    state: drained
    reason: "hpcvirt: switching to space_shared"
    wait: true
    timeout: 1800
  delegate_to: "{{ slurm_controller }}"

- name: Advertise the new regime and return the node to service
  hpcvirt.regime.slurm_node:
    name: node17
    active_features: [space_shared]
    state: resumed

- name: Read a node of a test cluster
  hpcvirt.regime.slurm_node:
    name: node1
    slurm_conf: /var/lib/hpcvirt/slurm-testbed/etc/slurm.conf
  register: node1
"""

RETURN = r"""
node:
  description: The node after the run (in check mode, as found).
  returned: always
  type: dict
  contains:
    name:
      description: Node name.
      type: str
    state:
      description: Slurm's state string as printed, e.g. C(MIXED+DRAIN), C(DOWN*+DRAIN).
      type: str
    summary:
      description: C(drained), C(draining), C(down), or the base state in lower case (C(idle), C(mixed), ...).
      type: str
    base_state:
      description: The state without flags, e.g. C(MIXED).
      type: str
    state_flags:
      description: Flags after the base state, e.g. C([DRAIN]).
      type: list
      elements: str
    responding:
      description: False when Slurm marks the node as not responding (C(*)).
      type: bool
    drain:
      description: Whether the drain flag is set.
      type: bool
    busy:
      description: Whether jobs still run (or complete) on the node.
      type: bool
    reason:
      description: Drain or down reason without Slurm's C([user@time]) suffix; null when none.
      type: str
    reason_user:
      description: Who set the reason.
      type: str
    reason_time:
      description: When the reason was set.
      type: str
    available_features:
      description: Available features.
      type: list
      elements: str
    active_features:
      description: Active features.
      type: list
      elements: str
    cpus_allocated:
      description: CPUs allocated to jobs.
      type: int
  sample: {"name": "node1", "state": "IDLE+DRAIN", "summary": "drained", "base_state": "IDLE",
           "state_flags": ["DRAIN"], "responding": true, "drain": true, "busy": false,
           "reason": "hpcvirt: switching to space_shared", "reason_user": "root",
           "reason_time": "2026-11-23T11:07:28", "available_features": ["space_shared", "time_shared"],
           "active_features": ["time_shared"], "cpus_allocated": 0, "cpus_total": 2, "partitions": ["debug"]}
before:
  description: The node as found, same keys as RV(node).
  returned: always
  type: dict
plan:
  description:
    - The changes, in order (C(drain), C(reason), C(features), C(resume)).
    - A C(features) step holds the feature lists that change, comma-separated, keyed
      C(available_features) and C(active_features), in its C(before) and C(after).
  returned: always
  type: list
  elements: dict
  sample: [{"action": "drain", "target": "node1", "before": "idle", "after": "drain", "reason": "hpcvirt: switching to space_shared"}]
waited:
  description: Whether the module waited for running jobs to end.
  returned: always
  type: bool
timings:
  description: Milliseconds spent reading the node, draining, setting features, resuming and waiting.
  returned: always
  type: dict
  sample: {"read": 12.4, "drain": 10.1, "wait": 0.0}
"""

import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError, module_main
from ansible_collections.hpcvirt.regime.plugins.module_utils._slurm import Scontrol, converge

ARGUMENT_SPEC = dict(
    name=dict(type="str", required=True, aliases=["nodename"]),
    state=dict(type="str", choices=["drained", "resumed"]),
    reason=dict(type="str"),
    wait=dict(type="bool", default=False),
    timeout=dict(type="int", default=600),
    available_features=dict(type="list", elements="str"),
    active_features=dict(type="list", elements="str"),
    managed_features=dict(type="list", elements="str"),
    slurm_conf=dict(type="path"),
    scontrol=dict(type="str", default="scontrol"),
)


def find_scontrol(module):
    wanted = module.params["scontrol"]
    if os.sep in wanted:
        if os.access(wanted, os.X_OK):
            return wanted
        raise HpcvirtError("scontrol: %s is not an executable file" % wanted)
    found = module.get_bin_path(wanted, required=False, opt_dirs=["/usr/sbin", "/usr/local/bin", "/usr/local/sbin"])
    if not found:
        raise HpcvirtError("scontrol: '%s' was not found on this host; install the Slurm client (Debian: "
                           "slurm-client) or give its path in the scontrol option" % wanted)
    return found


def make_runner(module):
    environ = {}
    slurm_conf = module.params["slurm_conf"]
    if slurm_conf:
        # scontrol retries a missing configuration file for a minute: fail at once instead.
        if not os.path.isfile(slurm_conf):
            raise HpcvirtError("slurm_conf: %s does not exist or is not a file" % slurm_conf)
        environ["SLURM_CONF"] = slurm_conf

    def run(argv):
        return module.run_command(argv, environ_update=environ, check_rc=False)

    return Scontrol(run, find_scontrol(module))


@module_main(ARGUMENT_SPEC, required_if=[("state", "drained", ["reason"])], supports_check_mode=True)
def main(module):
    result = converge(make_runner(module), module.params, module.check_mode, warn=module.warn)
    if not module._diff:
        result.pop("diff")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
