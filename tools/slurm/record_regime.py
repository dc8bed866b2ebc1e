# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-bed stand-in for the regime switch: record REGIME in REGIME_FILE, as a regime change does.

    record-regime REGIME_FILE REGIME

The test bed's simulated nodes share one machine, so their CPU layout cannot really differ; this
records the regime with the collection's own writer (_state.write_json_atomic, same format as
/var/lib/hpcvirt/regime.json). ``HPCVIRT_SLURM_FAIL_SWITCH=1`` in slurmd's environment, or a
file ``fail-switch`` beside REGIME_FILE, makes it fail, to test failure handling.
"""

from __future__ import annotations

import datetime
import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections"))

from ansible_collections.hpcvirt.regime.plugins.module_utils._state import write_json_atomic  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: record-regime REGIME_FILE REGIME\n")
        return 2
    path, regime = sys.argv[1], sys.argv[2]
    if os.environ.get("HPCVIRT_SLURM_FAIL_SWITCH") or os.path.exists(os.path.join(os.path.dirname(path), "fail-switch")):
        sys.stderr.write("record-regime: switch to %s failed on purpose (test)\n" % regime)
        return 1
    write_json_atomic("/", path.lstrip("/"), {
        "regime": regime,
        "changed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changed_by": "tools/slurm/record-regime",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
