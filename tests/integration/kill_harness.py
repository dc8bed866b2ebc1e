"""Run the node_regime module as its own process and SIGKILL it after K journalled steps.

Usage: python kill_harness.py K ARGS_JSON_FILE. The module's code is unchanged: the harness wraps
``Journal.step_done`` so that the process kills itself (a real SIGKILL, nothing is cleaned up)
right after the journal records step K.
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.hpcvirt.regime.plugins.module_utils import _regime  # noqa: E402

KILL_AFTER = int(sys.argv[1])
_original = _regime.Journal.step_done


def step_done_then_die(self, count):
    _original(self, count)
    if count >= KILL_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)


_regime.Journal.step_done = step_done_then_die
module = os.path.join(ROOT, "plugins", "modules", "node_regime.py")
sys.argv = [module, sys.argv[2]]
runpy.run_path(module, run_name="__main__")
