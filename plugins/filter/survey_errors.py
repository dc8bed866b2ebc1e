# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: survey_errors
short_description: Check a job's answers against the values its playbook accepts
version_added: 0.1.0
description:
  - Used by C(playbooks/tasks/survey.yml), which every playbook an AWX job template runs includes
    first, so that an answer outside its choices or bounds is refused before anything changes.
  - Returns one sentence per bad answer, naming the variable and why; an empty list when all are good.
  - Rule types are C(choice) (C(choices)), C(int) (C(min), C(max)), C(bool) (yes/no, true/false),
    C(batch) (a number of hosts from C(min) to C(max), a percentage, or a list of them),
    C(host_pattern) (a host pattern as C(--limit) takes it) and C(hosts) (a group name or a list of host names).
options:
  _input:
    description: Variable name to value; the value C(__hpcvirt_unset__) means not given.
    type: dict
    required: true
  rules:
    description: Variable name to its rule (C(type) and what the type needs).
    type: dict
    required: true
  required:
    description: Names that must be given.
    type: list
    elements: str
    default: []
"""

EXAMPLES = r"""
- name: Refuse bad answers
  ansible.builtin.assert:
    that: errors | length == 0
    fail_msg: "{{ errors | join('; ') }}"
  vars:
    errors: "{{ {'regime': regime} | hpcvirt.regime.survey_errors(hpcvirt_survey_rules, required=['regime']) }}"
"""

RETURN = r"""
_value:
  description: One sentence per bad answer, naming the variable.
  type: list
  elements: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.module_utils._survey import RuleError, answer_errors


def survey_errors(answers, rules, required=None):
    if not isinstance(answers, dict) or not isinstance(rules, dict):
        raise AnsibleFilterError("survey_errors: the answers and the rules must be dictionaries")
    try:
        return answer_errors(dict(answers), rules, list(required or []))
    except (RuleError, KeyError, TypeError) as exc:
        raise AnsibleFilterError("survey_errors: %s" % exc)


class FilterModule:
    def filters(self):
        return {"survey_errors": survey_errors}
