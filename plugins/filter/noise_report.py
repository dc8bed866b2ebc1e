# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: noise_report
short_description: Render characterise cells as one aligned table per node
version_added: 0.1.0
description:
  - Takes the C(cells) of one or more M(hpcvirt.regime.characterise) calls on a node and returns
    the report as text - one row per cell (environment, where, load, confinement, longest detour,
    noise share in parts per million, detours per second, time spun), then the ratios unconfined
    over confined.
options:
  _input:
    description: The cells, concatenated.
    type: list
    elements: dict
    required: true
  node:
    description: The node's name for the title.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Print the report
  ansible.builtin.debug:
    msg: "{{ (native.cells + guest.cells) | hpcvirt.regime.noise_report(inventory_hostname) }}"
"""

RETURN = r"""
_value:
  description: The report text, lines separated by newlines.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.module_utils._characterise import render_report


def noise_report(cells, node=""):
    try:
        return render_report(list(cells), str(node))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnsibleFilterError("noise_report: a cell lacks a field or has a bad one: %s" % exc)


class FilterModule:
    def filters(self):
        return {"noise_report": noise_report}
