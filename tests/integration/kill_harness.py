"""Run one of the collection's modules as its own process and SIGKILL it after K executed steps.

Usage: python kill_harness.py MODULE K ARGS_JSON_FILE. The module's code is unchanged: every plan
step of every module goes through ``_plan.execute``, and the harness wraps it so that the process
kills itself (a real SIGKILL: nothing is cleaned up, no journal is finished) right after the K-th
step carried out in this process (counted across execute calls, so multi-plan modules are covered).
"""

import os
import runpy
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))

from ansible_collections.hpcvirt.regime.plugins.module_utils import _plan  # noqa: E402

MODULE, KILL_AFTER, ARGS = sys.argv[1], int(sys.argv[2]), sys.argv[3]
_original = _plan.execute
_count = [0]


def execute_then_die(plan, ctx, check_mode=False, timings=None, journal=None, on_step=None, phases=None):
    def counted(step):
        if on_step is not None:
            on_step(step)
        _count[0] += 1
        if _count[0] >= KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
    return _original(plan, ctx, check_mode, timings, journal, counted, phases)


_plan.execute = execute_then_die
module = os.path.join(ROOT, "plugins", "modules", MODULE + ".py")
sys.argv = [module, ARGS]
runpy.run_path(module, run_name="__main__")
