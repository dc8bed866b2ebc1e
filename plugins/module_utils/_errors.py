# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where a module's errors become ``fail_json``.

Every module's ``main`` is wrapped by ``module_main``: whatever is raised inside ends as one
``fail_json`` whose ``msg`` names what failed and why, with the traceback in ``exception`` (shown
with ``-vvv``), never as a bare traceback. Planners raise ``HpcvirtError`` (or a subclass) with a
message that names the field or file; the executor raises ``_plan.StepFailed`` naming the step.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import StepFailed, error_message


class HpcvirtError(Exception):
    """An error the operator can act on. ``details`` are added to the failed result."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def describe(exc):
    """``(msg, extra)`` for any exception: the message an operator reads, and result fields."""
    extra = dict(getattr(exc, "details", None) or {})
    if isinstance(exc, StepFailed):
        extra.setdefault("plan", exc.plan.to_list())
        extra.setdefault("steps_done", exc.index)
        extra.setdefault("failed_step", exc.index + 1)
        extra.setdefault("changed", exc.index > 0)
        extra.update(getattr(exc.error, "details", None) or {})
        hint = ("the steps before it were applied; run again to converge from here" if exc.index
                else "nothing was changed")
        return "%s (%s)" % (exc, hint), extra
    if isinstance(exc, HpcvirtError):
        return str(exc), extra
    name = type(exc).__name__
    if name == "libvirtError":
        return "libvirt: %s" % error_message(exc), extra
    if isinstance(exc, OSError):
        return error_message(exc), extra
    if isinstance(exc, (ValueError, KeyError, TypeError)) and type(exc).__module__.startswith("ansible_collections.hpcvirt"):
        return str(exc), extra
    return ("internal error (%s): %s. This is a bug in hpcvirt.regime; the traceback is in 'exception' (-vvv)"
            % (name, error_message(exc)), extra)


def fail(module, exc, prefix=None, **extra):
    msg, fields = describe(exc)
    fields.update(extra)
    fields.setdefault("changed", False)
    if prefix:
        msg = "%s: %s" % (prefix, msg)
    module.fail_json(msg=msg, exception="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                     **fields)


@contextmanager
def failures(module, prefix=None, **extra):
    """Turn any exception in the block into ``fail_json`` (``prefix`` says what was being done)."""
    try:
        yield
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as exc:  # the choke point: every error of a module ends here
        fail(module, exc, prefix, **extra)


def module_main(argument_spec, **module_kwargs):
    """Decorate ``body(module)``: build the AnsibleModule, run the body, fail cleanly on any error."""
    def decorate(body):
        def main():
            from ansible.module_utils.basic import AnsibleModule  # here: the boot-time re-apply has no Ansible

            spec = argument_spec() if callable(argument_spec) else argument_spec
            module = AnsibleModule(argument_spec=spec, **module_kwargs)
            with failures(module):
                body(module)
        main.__doc__ = body.__doc__
        return main
    return decorate
