# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans: the ordered list of changes a module makes, and the timings of applying them.

A module computes a plan from the current state, returns it (``plan``), shows it as ``--diff``
and applies it unless in check mode. Because check mode and the real run share the plan, check
mode predicts exactly what a run changes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Step:
    """One change: ``action`` on ``target``, from ``before`` to ``after``."""

    def __init__(self, action, target, before=None, after=None, **detail):
        self.action = action
        self.target = target
        self.before = before
        self.after = after
        self.detail = detail

    def to_dict(self):
        data = {"action": self.action, "target": self.target, "before": self.before, "after": self.after}
        data.update(self.detail)
        return data

    def describe(self):
        return "%s %s: %r -> %r" % (self.action, self.target, self.before, self.after)

    def __repr__(self):
        return "Step(%s)" % self.describe()


class Plan:
    """An ordered list of steps; empty means nothing to change."""

    def __init__(self, steps=None):
        self.steps = list(steps or [])

    def add(self, action, target, before=None, after=None, **detail):
        step = Step(action, target, before, after, **detail)
        self.steps.append(step)
        return step

    def extend(self, other):
        self.steps.extend(other.steps)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self):
        return len(self.steps)

    def __bool__(self):
        return bool(self.steps)

    @property
    def changed(self):
        return bool(self.steps)

    def to_list(self):
        return [step.to_dict() for step in self.steps]

    def diff(self, header=None):
        """Ansible's diff: before/after per target, in plan order."""
        before, after = {}, {}
        for step in self.steps:
            key = "%s %s" % (step.action, step.target)
            before.setdefault(key, step.before)
            after[key] = step.after
        diff = {"before": before, "after": after}
        if header:
            diff["before_header"] = diff["after_header"] = header
        return diff


class Timings:
    """Milliseconds per named live operation, summed when a name repeats."""

    def __init__(self):
        self.ms = {}

    @contextmanager
    def measure(self, name):
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, (time.monotonic() - start) * 1000.0)

    def add(self, name, ms):
        self.ms[name] = round(self.ms.get(name, 0.0) + ms, 3)

    def to_dict(self):
        return dict(self.ms)
