# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: restore_plan
short_description: Find the guests to bring home to nodes returning to time-shared
version_added: 0.1.0
description:
  - Reads only the guests' own hpcvirt metadata, as M(hpcvirt.regime.node_info) returned it on
    every node, so a restore needs no state kept from the evacuation.
  - A running guest whose C(migration) metadata names one of the O(homes) as its home (by libvirt
    host name) and that runs on another node is to be migrated home.
  - A guest on one of the O(homes) that is shut off with a managed save image and C(checkpoint
    state=preempted) is to be resumed.
options:
  _input:
    description: Every node a guest may be on, the homes included, as C({inventory host - node_info result}).
    type: dict
    required: true
  homes:
    description: Inventory hosts returning to time-shared.
    type: list
    elements: str
    required: true
  pattern:
    description: Regular expression (searched) a guest name must match; empty considers every guest.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: What comes back to rack-3
  ansible.builtin.set_fact:
    plan: "{{ nodes | hpcvirt.regime.restore_plan(ansible_play_hosts) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description: C(moves) (name, from, to, pool of the home) and C(resume) (name, on).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.module_utils._migrate import PlanInputError, plan_restore


def restore_plan(nodes, homes, pattern=""):
    try:
        if not isinstance(homes, (list, tuple)):
            raise PlanInputError("homes: must be a list of inventory hosts, not %s" % type(homes).__name__)
        return plan_restore(nodes, list(homes), pattern or None)
    except PlanInputError as exc:
        raise AnsibleFilterError("restore_plan: %s" % exc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A node_info result without the fields the plan reads (or a value of the wrong type).
        raise AnsibleFilterError("restore_plan: the node_info results are not as expected (%s: %s)"
                                 % (exc.__class__.__name__, exc))


class FilterModule:
    def filters(self):
        return {"restore_plan": restore_plan}
