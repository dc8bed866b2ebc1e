# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checks of a job's answers (AWX survey answers, extra vars) against the rules a playbook accepts.

Pure: ``answer_errors`` takes the rules (playbooks/vars/survey.yml), the answers given and the
names that must be answered, and returns one sentence per bad answer naming the variable and why.
"""

from __future__ import annotations

import re

UNSET = "__hpcvirt_unset__"
TRUE_WORDS = ("yes", "true", "on", "1")
FALSE_WORDS = ("no", "false", "off", "0")
# Host patterns as --limit takes them: names, groups, wildcards, ranges, unions (: or ,),
# intersections (&) and exclusions (!); no regular expressions (~), no spaces.
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.*\-\[\]:,&!]{1,256}")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
PERCENT = re.compile(r"([0-9]{1,3})%")
KINDS = ("choice", "int", "bool", "batch", "host_pattern", "hosts")


class RuleError(ValueError):
    """A rule itself is malformed (a bug in the rules file, not in the answer)."""


def _int(value):
    """An int from an int or a string of digits (extra vars from the command line are strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,9}", value.strip()):
        return int(value.strip())
    return None


def as_bool(value):
    """True/False for a yes/no answer, None when it is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _shown(value):
    text = repr(value) if not isinstance(value, str) else "'%s'" % value
    return text if len(text) <= 80 else text[:77] + "..."


def _check_batch_item(value, rule):
    number = _int(value)
    if number is not None:
        if not rule.get("min", 0) <= number <= rule.get("max", 10000):
            return "must be between %d and %d hosts (0 means all at once)" % (rule.get("min", 0), rule.get("max", 10000))
        return None
    if isinstance(value, str):
        match = PERCENT.fullmatch(value.strip())
        if match and 1 <= int(match.group(1)) <= 100:
            return None
    return "must be a number of hosts or a percentage from 1% to 100%"


def check_answer(name, value, rule):
    """Why ``value`` is not acceptable for ``name`` under ``rule``, or None when it is."""
    kind = rule.get("type")
    if kind not in KINDS:
        raise RuleError("%s: unknown rule type %r" % (name, kind))
    if kind == "choice":
        choices = rule["choices"]
        if not isinstance(value, str) or value not in choices:
            return "%s: %s is not one of %s" % (name, _shown(value), ", ".join(choices))
    elif kind == "int":
        number = _int(value)
        low, high = rule["min"], rule["max"]
        if number is None or not low <= number <= high:
            return "%s: %s is not a whole number from %d to %d" % (name, _shown(value), low, high)
    elif kind == "bool":
        if as_bool(value) is None:
            return "%s: %s is not yes or no" % (name, _shown(value))
    elif kind == "batch":
        items = value if isinstance(value, list) else [value]
        if not items or len(items) > 100:
            return "%s: give 1 to 100 batch sizes, not %d" % (name, len(items))
        for item in items:
            why = _check_batch_item(item, rule)
            if why:
                return "%s: %s %s" % (name, _shown(item), why)
    elif kind == "host_pattern":
        if not isinstance(value, str) or not HOST_PATTERN.fullmatch(value):
            return ("%s: %s is not a host pattern (1 to 256 of letters, digits and _ . * - [ ] : , & !)"
                    % (name, _shown(value)))
    elif kind == "hosts":
        # An inventory group name, or a list of inventory host names.
        names = value if isinstance(value, list) else [value]
        if isinstance(value, list) and len(value) > 10000:
            return "%s: more than 10000 hosts" % name
        for item in names:
            if not isinstance(item, str) or not NAME.fullmatch(item):
                return "%s: %s is not a group or host name" % (name, _shown(item))
    return None


def answer_errors(answers, rules, required=()):
    """One sentence per bad answer: unknown to the rules, missing though required, or refused."""
    errors = []
    for name in required:
        if answers.get(name, UNSET) == UNSET:
            errors.append("%s: an answer is required" % name)
    for name in sorted(answers):
        value = answers[name]
        if value == UNSET:
            continue
        if name not in rules:
            raise RuleError("%s: no rule says what it accepts" % name)
        why = check_answer(name, value, rules[name])
        if why:
            errors.append(why)
    return errors
