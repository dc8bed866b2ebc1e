# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plans and the one executor that carries them out.

A planner turns the node's state (``_node.NodeState``) and a request into a ``Plan``: an ordered
list of ``Step`` objects, each of a typed ``Action`` that the planner owns (the action knows how to
carry a step out). A module returns the plan (``plan``), shows it as ``--diff`` and hands it to
``execute``, the only place where steps are carried out and where check mode is decided: in check
mode nothing runs, so check mode and the real run share one plan and check mode predicts exactly
what a run changes.

``execute`` times every step (milliseconds, summed per action phase in ``Timings``), records on the
step what the kernel or libvirt answered, and, for a journalled plan, writes the journal before the
first step and after every step, and removes it when the plan completes. A step that fails raises
``StepFailed`` naming the step; the journal (when there is one) stays to tell the next run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Action:
    """A kind of step. ``run(ctx, step)`` carries one step out and may return what it learned.

    ``phase`` groups actions in timings and reports (``carve``, ``place``, ...). ``live`` says the
    action changes a running system (its time is reported as a live operation).
    """

    def __init__(self, name, run, phase=None, live=True):
        self.name = name
        self.run = run
        self.phase = phase or name
        self.live = live

    def __str__(self):
        return self.name

    def __repr__(self):
        return "Action(%s)" % self.name

    # TRANSITIONAL (removed when every planner owns typed actions): a bare name still compares equal.
    def __eq__(self, other):
        if isinstance(other, str):
            return self.name == other
        return self is other

    def __hash__(self):
        return hash(self.name)


def _legacy(name):
    def run(_ctx, _step):
        raise TypeError("step %s has no action to run it" % name)
    return Action(name, run)


class Step:
    """One change: ``action`` on ``target``, from ``before`` to ``after``."""

    def __init__(self, action, target, before=None, after=None, **detail):
        if isinstance(action, str):  # TRANSITIONAL
            action = _legacy(action)
        if not isinstance(action, Action):
            raise TypeError("a plan step needs an Action, not %r" % (action,))
        self.action = action
        self.target = target
        self.before = before
        self.after = after
        self.detail = detail
        self.ms = None          # time the step took when it was carried out
        self.result = None      # what the action returned

    @property
    def name(self):
        return self.action.name

    def to_dict(self):
        data = {"action": self.action.name, "target": self.target, "before": self.before, "after": self.after}
        data.update(self.detail)
        return data

    def describe(self):
        return "%s %s: %r -> %r" % (self.action.name, self.target, self.before, self.after)

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
        self.steps.extend(other.steps if isinstance(other, Plan) else other)

    def of(self, *actions):
        """The steps of the given actions, in plan order."""
        return [step for step in self.steps if step.action in actions]

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
            key = "%s %s" % (step.action.name, step.target)
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


class Context:
    """What actions need to carry steps out (a libvirt connection, the node root, ...).

    Planners and modules set attributes freely; ``done`` lists the steps carried out so far in
    this execution (an action may look back, e.g. to roll back earlier hugepage steps).
    """

    def __init__(self, **values):
        self.done = []
        self.__dict__.update(values)

    def get(self, name, default=None):
        return self.__dict__.get(name, default)


class StepFailed(Exception):
    """A step of a plan could not be carried out; the steps before it were."""

    def __init__(self, plan, index, error):
        step = plan.steps[index]
        super().__init__("step %d of %d (%s %s): %s" % (index + 1, len(plan), step.action.name, step.target,
                                                         error_message(error)))
        self.plan = plan
        self.index = index
        self.step = step
        self.error = error

    @property
    def done(self):
        return self.index


def error_message(exc):
    """The plain message of an exception (libvirt's text without its prefix noise)."""
    getter = getattr(exc, "get_error_message", None)
    if callable(getter):
        try:
            text = getter()
        except Exception:  # pragma: no cover - libvirt error objects always answer
            text = None
        if text:
            return text
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return "%s%s" % ("%s: " % where if where else "", exc.strerror)
    return str(exc) or exc.__class__.__name__


def execute(plan, ctx, check_mode=False, timings=None, journal=None, on_step=None, phases=None):
    """Carry ``plan`` out in order, unless ``check_mode``: the one place steps are executed.

    Returns the number of steps carried out. ``journal`` (a ``_journal.Journal``) is begun before
    the first step, told after every step and finished at the end. ``on_step(step)`` is called
    after each step (progress, results). ``phases`` (Action -> name) files a composed plan's
    timings under the composer's phase names. Raises ``StepFailed`` for the first step that fails.
    """
    if check_mode or not plan:
        return 0
    timings = timings if timings is not None else Timings()
    if journal is not None:
        journal.begin(plan)
    phases = phases or {}
    ctx.done = []
    for index, step in enumerate(plan.steps):
        phase = phases.get(step.action, step.action.phase)
        start = time.monotonic()
        try:
            step.result = step.action.run(ctx, step)
        except Exception as exc:
            step.ms = round((time.monotonic() - start) * 1000.0, 3)
            timings.add(phase, step.ms)
            raise StepFailed(plan, index, exc)
        step.ms = round((time.monotonic() - start) * 1000.0, 3)
        timings.add(phase, step.ms)
        ctx.done.append(step)
        if journal is not None:
            journal.step_done(index + 1)
        if on_step is not None:
            on_step(step)
    if journal is not None:
        journal.finish()
    return len(plan)
