# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller half of hpcvirt.regime.await_job: poll an async job, print its progress, return its result."""

from __future__ import annotations

import json
import shlex
import time

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

SPEC = {
    "jid": {"type": "str", "required": True},
    "kind": {"type": "str", "choices": ["node_regime", "fleet", "none"], "default": "none"},
    "name": {"type": "str"},
    "label": {"type": "str", "default": "job"},
    "interval": {"type": "int", "default": 5},
    "poll": {"type": "int", "default": 1},
    "timeout": {"type": "int", "default": 3600},
    "uri": {"type": "str", "default": "qemu:///system"},
}
BOUNDS = {"interval": (1, 600), "poll": (1, 60), "timeout": (1, 86400)}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_async = False
    _supports_check_mode = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(argument_spec=SPEC, required_if=[("kind", "fleet", ["name"])])
        for key, (low, high) in BOUNDS.items():
            if not low <= args[key] <= high:
                result.update(failed=True, msg="%s: %d is outside %d to %d seconds" % (key, args[key], low, high))
                return result
        host = (task_vars or {}).get("inventory_hostname", "node")
        label = " ".join(str(args["label"]).split())[:120] or "job"
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        status_args = {"jid": args["jid"], "_async_dir": async_dir}
        started = last = time.monotonic()
        while True:
            status = self._status(async_dir, args["jid"], status_args, task_vars)
            now = time.monotonic()
            if status.get("finished"):
                break
            if now - started >= args["timeout"]:
                result.update(failed=True, elapsed_s=round(now - started, 1),
                              msg="%s: still running after %d s; it goes on on the node (async job %s)"
                                  % (label, args["timeout"], args["jid"]))
                return result
            if now - last >= args["interval"]:
                last = now
                reading = self._execute_module(module_name="hpcvirt.regime.await_job", module_args=args,
                                               task_vars=task_vars)
                text = (reading.get("progress") or {}).get("text") or reading.get("msg") or "running"
                display.display("%s: %s: %s, %.0f s elapsed" % (host, label, text, now - started))
            time.sleep(args["poll"])
        self._execute_module(module_name="ansible.legacy.async_status",
                             module_args=dict(status_args, mode="cleanup"), task_vars=task_vars)
        elapsed = time.monotonic() - started
        display.display("%s: %s: %s after %.1f s" % (host, label, "failed" if status.get("failed") else "done", elapsed))
        for key in ("started", "finished", "results_file", "stdout", "stderr", "stdout_lines", "stderr_lines"):
            status.pop(key, None)
        result.update(status)
        result["elapsed_s"] = round(elapsed, 1)
        return result

    def _status(self, async_dir, jid, status_args, task_vars):
        """The job's status file read with one cat (cheap enough to poll every second); the
        async_status module when that is not possible. The file is JSON once the job ended; a
        missing, empty or half-written file means still running, as for async_status."""
        if not self._is_safe_jid(jid):
            return self._execute_module(module_name="ansible.legacy.async_status", module_args=status_args,
                                        task_vars=task_vars)
        path = self._connection._shell.join_path(async_dir, jid)
        res = self._low_level_execute_command("cat %s" % shlex.quote(path))
        if res.get("rc") != 0:
            # No status file: let async_status say why (it fails with "could not find job").
            return self._execute_module(module_name="ansible.legacy.async_status", module_args=status_args,
                                        task_vars=task_vars)
        try:
            data = json.loads(res.get("stdout") or "")
        except ValueError:
            return {"started": True, "finished": False}
        if not isinstance(data, dict):
            return {"started": True, "finished": False}
        if "started" not in data:
            data["finished"] = True
            data["ansible_job_id"] = jid
        elif "finished" not in data:
            data["finished"] = False
        return data

    @staticmethod
    def _is_safe_jid(jid):
        return 0 < len(jid) <= 64 and all(c.isalnum() or c in "._-" for c in jid)
