# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: evacuation_plan
short_description: Choose where every time-shared guest of the evacuated nodes goes
version_added: 0.1.0
description:
  - Plans a whole evacuation at once, on the controller, from what M(hpcvirt.regime.node_info)
    read on every node, so that guests migrating at the same time never overbook a destination.
  - The guests moved are the running guests of the sources that are not placed dedicated (observed
    or by hpcvirt intent) and whose name matches O(pattern); largest first.
  - A destination's capacity is its free memory (the kernel's MemAvailable as node_info read it on
    that node), its shared pool CPUs and the vCPUs already running there. C(spread) puts each guest
    on the destination with the most free memory left, C(pack) on the fullest one it still fits.
  - Guests that fit nowhere are listed to be preempted.
options:
  _input:
    description: The nodes being evacuated, as C({inventory host - node_info result}).
    type: dict
    required: true
  destinations:
    description: The nodes that may take guests, as C({inventory host - node_info result}); sources among them are left out.
    type: dict
    required: true
  strategy:
    description: C(spread) or C(pack).
    type: str
    default: spread
  reserve_memory_mb:
    description: Memory that must stay free on a destination, in MiB.
    type: int
    default: 0
  vcpu_overcommit:
    description: Most running vCPUs per pool CPU on a destination (0 no limit).
    type: float
    default: 0
  pattern:
    description: Regular expression (searched) a guest name must match to be moved; empty moves every time-shared guest.
    type: str
    default: ""
  keep:
    description:
      - Guests that stay where they are, as C({inventory host - [guest names]}); for example the guests the
        coming regime change drops onto that node's partitions.
    type: dict
"""

EXAMPLES = r"""
- name: Plan the evacuation of rack-3 onto the time-shared nodes
  ansible.builtin.set_fact:
    plan: "{{ sources | hpcvirt.regime.evacuation_plan(destinations, strategy='pack', reserve_memory_mb=512) }}"
  run_once: true
"""

RETURN = r"""
_value:
  description:
    - C(moves) (name, from, to, pool of the destination, memory_kb, vcpus), C(preempt) (name, from), C(stay) (guests left in
      place, name and from) and C(destinations) (free_memory_mb, pool, active_vcpus before the moves).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.module_utils._migrate import PlanInputError, number_arg, plan_evacuation


def evacuation_plan(sources, destinations, strategy="spread", reserve_memory_mb=0, vcpu_overcommit=0.0, pattern="",
                    keep=None):
    try:
        return plan_evacuation(sources, destinations, strategy, number_arg(reserve_memory_mb, "reserve_memory_mb"),
                               number_arg(vcpu_overcommit, "vcpu_overcommit", float), pattern or None, keep)
    except PlanInputError as exc:
        raise AnsibleFilterError("evacuation_plan: %s" % exc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # A node_info result without the fields the plan reads (or a value of the wrong type).
        raise AnsibleFilterError("evacuation_plan: the node_info results are not as expected (%s: %s)"
                                 % (exc.__class__.__name__, exc))


class FilterModule:
    def filters(self):
        return {"evacuation_plan": evacuation_plan}
