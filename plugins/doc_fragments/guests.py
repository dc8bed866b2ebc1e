# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Where named guests go (placement and node_regime share it; each module says whether it is required).
    DOCUMENTATION = r"""
options:
  guests:
    description: Placement of named guests.
    type: list
    elements: dict
    suboptions:
      name:
        description: Domain name.
        type: str
        required: true
      placement:
        description: C(dedicated) (vCPUs pinned 1:1 into a partition) or C(shared) (vCPUs float over the pool).
        type: str
        required: true
        choices: [dedicated, shared]
      partition:
        description:
          - For C(dedicated), the partition name, or C(auto) - the guest's current partition when its
            pins still hold there, else the best-fitting whole free partition on the guest's NUMA node.
        type: str
        default: auto
      cpu_shares:
        description: For C(shared), the guest's CPU weight (2..262144). Unset leaves it as it is.
        type: int
      vcpu_quota:
        description:
          - For C(shared), the CPU time each vCPU may use per period, in microseconds, or -1 for no
            limit. Unset leaves it as it is.
        type: int
"""
