# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The journal of a change in progress, and the lock that serialises changes on a node.

A journalled change writes what it set out to do to ``/var/lib/hpcvirt/journal/<name>.json``
before its first step and after every step (atomically), and removes the file when it completes.
A journal found at the start of a run proves the previous run was interrupted; the run reports it
and converges from the node's real state. ``NodeLock`` (an flock on the journal directory, which
the kernel releases when a killed run's process dies) keeps two changes of the same node from
interleaving.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    JOURNAL_DIR,
    now_iso,
    read_json,
    remove_state,
    state_path,
    write_json_atomic,
)

NAME_LIMIT = 200


class JournalError(Exception):
    """The journal or its lock cannot be used; the message names the file and why."""


class NodeLock:
    """An exclusive flock on the node's journal directory, waited for up to ``timeout`` seconds."""

    def __init__(self, root="/", timeout=300, what="another hpcvirt change"):
        self.path = state_path(root, JOURNAL_DIR)
        self.timeout = timeout
        self.what = what
        self.fd = None

    def __enter__(self):
        try:
            os.makedirs(self.path, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise JournalError("journal directory %s: %s" % (self.path, os.strerror(exc.errno)))
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise JournalError("%s holds the node lock %s for more than %d s"
                                       % (self.what, self.path, self.timeout))
                time.sleep(0.2)

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class Journal:
    """One change's journal. ``data`` holds the steps, how many are done, and planner extras."""

    def __init__(self, name, root="/", **extra):
        if not name or len(name) > NAME_LIMIT or "/" in name or name.startswith("."):
            raise JournalError("journal name %r is not a plain file name of at most %d characters"
                               % (name, NAME_LIMIT))
        self.name = name
        self.root = root
        self.relpath = os.path.join(JOURNAL_DIR, name + ".json")
        self.extra = extra
        self.data = None

    @property
    def path(self):
        return state_path(self.root, self.relpath)

    def previous(self):
        """What an interrupted run left, or None. A journal cut short still proves the interruption."""
        try:
            return read_json(self.root, self.relpath)
        except ValueError:
            return {"target": None, "done": None, "unreadable": True}
        except OSError as exc:
            raise JournalError("journal %s: %s" % (self.path, os.strerror(exc.errno)))

    def begin(self, plan, **extra):
        steps = [step.describe() for step in plan] if plan is not None else []
        self.data = {"started_at": now_iso(), "pid": os.getpid(), "steps": steps, "done": 0}
        self.data.update(self.extra)
        self.data.update(extra)
        self.save()

    def step_done(self, count):
        self.data["done"] = count
        self.save()

    def update(self, **values):
        if self.data is None:
            self.data = {"started_at": now_iso(), "pid": os.getpid(), "steps": [], "done": 0}
            self.data.update(self.extra)
        self.data.update(values)
        self.save()

    def save(self):
        try:
            write_json_atomic(self.root, self.relpath, self.data, mode=0o600)
        except OSError as exc:
            raise JournalError("journal %s: %s" % (self.path, os.strerror(exc.errno) if exc.errno else exc))

    def finish(self):
        try:
            remove_state(self.root, self.relpath)
        except OSError as exc:
            raise JournalError("journal %s: %s" % (self.path, os.strerror(exc.errno)))
        self.data = None

    @property
    def done(self):
        return self.data["done"] if self.data else 0
