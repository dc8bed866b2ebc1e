# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: vse_merge
short_description: Merge ordered VSE layers into one spec
version_added: 0.1.0
description:
  - Merges Virtual System Environment layers the way M(hpcvirt.regime.vse) does, on the controller,
    for inspection and templating.
  - Later layers override earlier ones; dicts merge recursively, scalars and lists are replaced.
  - C(key+) adds to a list (C(disks) merge by C(dev), C(networks) by C(name)); C(key-) with a list
    removes elements; C(key-) with C(null) removes the key.
  - An unknown key fails, naming the key and the layer.
options:
  _input:
    description: Ordered layers, each a dict with C(name) and C(spec).
    type: list
    elements: dict
    required: true
  provenance:
    description:
      - Return C({spec, provenance}) instead of the spec alone; provenance maps each top-level key
        to the layer that last set it.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Show the merged VSE of vendor, site and group layers
  ansible.builtin.debug:
    msg: "{{ [{'name': 'vendor', 'spec': vse_layer_vendor}, {'name': 'site', 'spec': vse_layer_site}] | hpcvirt.regime.vse_merge }}"

- name: Which layer set what
  ansible.builtin.debug:
    msg: "{{ (layers | hpcvirt.regime.vse_merge(provenance=true)).provenance }}"
"""

RETURN = r"""
_value:
  description: The merged spec, or C({spec, provenance}) with O(provenance=true).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import VseError, merge_layers


def vse_merge(layers, provenance=False):
    try:
        spec, origin = merge_layers(layers)
    except VseError as exc:
        raise AnsibleFilterError("vse_merge: %s" % exc)
    if provenance:
        return {"spec": spec, "provenance": origin}
    return spec


class FilterModule:
    def filters(self):
        return {"vse_merge": vse_merge}
