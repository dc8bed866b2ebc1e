# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files hpcvirt keeps on a node.

``/etc/hpcvirt/layout.json``   the desired partition layout (written by the partition module, read
                               at boot to re-apply it)
``/var/lib/hpcvirt/regime.json``  the regime the node was last moved to, and when
``/var/lib/hpcvirt/journal/``  plans being applied, so a killed run is detected and converged

Writes are atomic (temporary file, fsync, rename) so a crash never leaves half a file.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile

LAYOUT_FILE = "etc/hpcvirt/layout.json"
REGIME_FILE = "var/lib/hpcvirt/regime.json"
JOURNAL_DIR = "var/lib/hpcvirt/journal"


def now_iso():
    """The one timestamp format of hpcvirt records: UTC, seconds, ISO 8601 (2026-12-02T05:21:34+00:00)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def to_int(value, default=None):
    """``int(value)``, or ``default`` when the value is missing or not a whole number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def state_path(root, relpath):
    return os.path.join(root, relpath)


def read_json(root, relpath):
    """Parsed JSON of ``root/relpath``; None when the file does not exist."""
    path = state_path(root, relpath)
    try:
        with open(path, "r") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError("%s is not valid JSON: %s" % (path, exc))
    except OSError as exc:
        raise ValueError("%s cannot be read: %s" % (path, os.strerror(exc.errno) if exc.errno else exc))


def write_text_atomic(path, text, mode=0o644, make_dirs=True):
    """Write ``text`` to ``path`` atomically: a temporary file beside it, fsync, rename over it.

    A failure at any point leaves the old file as it was and no temporary file behind.
    """
    directory = os.path.dirname(path)
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(root, relpath, data, mode=0o644):
    write_text_atomic(state_path(root, relpath), json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def remove_state(root, relpath):
    """Remove ``root/relpath``; a file already gone is fine."""
    try:
        os.unlink(state_path(root, relpath))
    except FileNotFoundError:
        pass
