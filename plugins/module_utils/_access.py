# -*- coding: utf-8 -*-
# Copyright: hpcvirt.regime contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""allowed_users enforced by libvirt itself: polkit rules, one file per VSE.

A libvirtd with ``access_drivers = [ "polkit" ]`` asks polkit about every API call, naming the
action (``org.libvirt.api.domain.start``, ...) and details (``connect_driver``, ``domain_name``,
``domain_uuid``). The collection writes, per VSE, ``<rules_dir>/60-hpcvirt-vse-<name>.rules``: the
VSE's listed Unix users may connect (``org.libvirt.unix.manage``, ``connect.getattr``,
``connect.search-domains``) and, on that VSE's guests only (matched by name or UUID), use the
actions in DOMAIN_ACTIONS; anything else is NOT_HANDLED there. libvirt's own defaults let anyone
who can connect see every domain (``domain.getattr`` and ``connect.*`` default to yes), so one more
file, ``61-hpcvirt-vse-default.rules``, read after every VSE file, closes that: root and members of
the admin group (default ``libvirt``, Debian's group of full libvirt users) may do everything; any
other user is refused every ``org.libvirt.api.*`` action no VSE file granted. listAllDomains
filters by ``domain.getattr``, so a listed user sees only the guests of the VSEs that list them.
It is written with the first VSE file and removed with the last.

Everything here is pure but for :func:`apply` (writes or removes the one file, atomically).
Every value that reaches the JavaScript is validated first and then written with ``json.dumps``.
"""

from __future__ import annotations

import json
import os
import re
import uuid as _uuid

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import write_text_atomic

RULES_DIR = "/etc/polkit-1/rules.d"
RULES_PREFIX = "60-hpcvirt-vse-"
RULES_SUFFIX = ".rules"
DEFAULT_RULES = "61-hpcvirt-vse-default.rules"
ADMIN_GROUP = "libvirt"

# What a listed user may do with the VSE's guests (libvirt's ACL permission names).
DOMAIN_ACTIONS = (
    "getattr",        # look it up, see it in listAllDomains
    "read",           # state, info, XML without secrets
    "start",          # create / resume from managed save
    "stop",           # destroy
    "init-control",   # shutdown, reboot
    "open-device",    # the serial console (virDomainOpenConsole)
    "open-graphics",  # SPICE / VNC
)
KNOWN_DOMAIN_ACTIONS = DOMAIN_ACTIONS + ("suspend", "reset", "screenshot", "send-input", "save", "snapshot")
CONNECT_ACTIONS = (
    "org.libvirt.unix.manage",              # open the read-write socket (auth_unix_rw = polkit)
    "org.libvirt.api.connect.getattr",      # virConnectOpen and the connection's attributes
    "org.libvirt.api.connect.search-domains",  # listAllDomains (then filtered by domain.getattr)
)
CONNECT_DRIVER = "QEMU"

# POSIX portable user names: the portable filename character set, not starting with '-';
# 32 characters (useradd's limit); not all digits (that reads as a uid).
_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}")
# libvirt domain names the collection makes, and VSE names (also a file name part).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}")
MAX_USERS = 256
MAX_GUESTS = 4096


class AccessError(HpcvirtError, ValueError):
    """A bad allowed_users / guest / VSE value: ``field`` names it."""

    def __init__(self, field, reason):
        super().__init__("%s: %s" % (field, reason), field=field)
        self.field = field


def _shown(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_user(value, field="allowed_users"):
    if not isinstance(value, str):
        raise AccessError(field, "%s is not a string (a Unix user name)" % _shown(value))
    if not _USER.fullmatch(value) or value.isdigit() or value in (".", ".."):
        raise AccessError(field, "%s is not a portable Unix user name (letters, digits, '.', '_', '-', "
                                 "not starting with '-', at most 32 characters, not all digits)" % _shown(value))
    return value


def validate_name(value, field):
    if not isinstance(value, str):
        raise AccessError(field, "%s is not a string" % _shown(value))
    if not _NAME.fullmatch(value) or ".." in value:
        raise AccessError(field, "%s is not a valid name (letters, digits, '_', '.', '+', '-', starting "
                                 "with a letter or digit, no '..', at most 63 characters)" % _shown(value))
    return value


def validate_uuid(value, field):
    if not isinstance(value, str) or len(value) > 40:
        raise AccessError(field, "%s is not a UUID" % _shown(value))
    try:
        parsed = _uuid.UUID(value)
    except ValueError:
        raise AccessError(field, "%s is not a UUID" % _shown(value)) from None
    if str(parsed) != value.lower():  # only the canonical 8-4-4-4-12 form libvirt reports
        raise AccessError(field, "%s is not a UUID in the 8-4-4-4-12 form" % _shown(value))
    return str(parsed)


def _validated_list(values, field, check, limit):
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise AccessError(field, "must be a list, not %s" % type(values).__name__)
    if len(values) > limit:
        raise AccessError(field, "%d entries; at most %d" % (len(values), limit))
    out = []
    for index, value in enumerate(values):
        item = check(value, "%s[%d]" % (field, index))
        if item not in out:
            out.append(item)
    return sorted(out)


def rules_path(vse, rules_dir=RULES_DIR):
    """The one rule file of VSE ``vse`` (the name is validated: the path cannot leave rules_dir)."""
    validate_name(vse, "name")
    if RULES_PREFIX + vse + RULES_SUFFIX == DEFAULT_RULES:  # cannot happen (60- vs 61-); kept explicit
        raise AccessError("name", "%s is reserved" % _shown(vse))
    return os.path.join(rules_dir, RULES_PREFIX + vse + RULES_SUFFIX)


def render_rules(vse, users, guests, uuids=(), actions=DOMAIN_ACTIONS):
    """The polkit JavaScript for VSE ``vse``; None when no user is listed (then no file at all).

    ``guests`` are domain names, ``uuids`` domain UUIDs; a domain matching either is the VSE's.
    """
    validate_name(vse, "name")
    users = _validated_list(users, "allowed_users", validate_user, MAX_USERS)
    guests = _validated_list(guests, "guests", validate_name, MAX_GUESTS)
    uuids = _validated_list(uuids, "uuids", validate_uuid, MAX_GUESTS)
    if isinstance(actions, str) or not isinstance(actions, (list, tuple)):
        raise AccessError("actions", "must be a list of libvirt domain permissions")
    for index, action in enumerate(actions):
        if action not in KNOWN_DOMAIN_ACTIONS:
            raise AccessError("actions[%d]" % index, "%s is not one of %s"
                              % (_shown(action), ", ".join(KNOWN_DOMAIN_ACTIONS)))
    if not users:
        return None
    domain_actions = ["org.libvirt.api.domain." + a for a in sorted(set(actions))]

    def js(value):
        return json.dumps(value, ensure_ascii=True)

    lines = [
        "// hpcvirt.regime: access to the guests of VSE %s. Written by the collection; do not edit." % js(vse),
        "polkit.addRule(function (action, subject) {",
        "    var users = %s;" % js(users),
        "    var names = %s;" % js(guests),
        "    var uuids = %s;" % js(uuids),
        "    var connect = %s;" % js(list(CONNECT_ACTIONS)),
        "    var domain = %s;" % js(domain_actions),
        "    if (users.indexOf(subject.user) < 0) {",
        "        return polkit.Result.NOT_HANDLED;",
        "    }",
        "    if (action.id === connect[0]) {",
        "        return polkit.Result.YES;",
        "    }",
        "    if (action.lookup(\"connect_driver\") !== %s) {" % js(CONNECT_DRIVER),
        "        return polkit.Result.NOT_HANDLED;",
        "    }",
        "    if (connect.indexOf(action.id) >= 0) {",
        "        return polkit.Result.YES;",
        "    }",
        "    if (domain.indexOf(action.id) >= 0 &&",
        "        (names.indexOf(action.lookup(\"domain_name\")) >= 0 ||",
        "         uuids.indexOf(action.lookup(\"domain_uuid\")) >= 0)) {",
        "        return polkit.Result.YES;",
        "    }",
        "    return polkit.Result.NOT_HANDLED;",
        "});",
        "",
    ]
    return "\n".join(lines)


def read_current(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def render_default_rules(admin_group=ADMIN_GROUP):
    """The file read after every VSE file: root and the admin group keep full access, everyone
    else is refused whatever no VSE file granted."""
    validate_user(admin_group, "admin_group")

    def js(value):
        return json.dumps(value, ensure_ascii=True)

    lines = [
        "// hpcvirt.regime: read after the 60-hpcvirt-vse-*.rules files. Written by the collection; do not edit.",
        "polkit.addRule(function (action, subject) {",
        "    if (action.id.indexOf(\"org.libvirt.api.\") !== 0) {",
        "        return polkit.Result.NOT_HANDLED;",
        "    }",
        "    if (subject.user === \"root\" || subject.isInGroup(%s)) {" % js(admin_group),
        "        return polkit.Result.YES;",
        "    }",
        "    return polkit.Result.NO;",
        "});",
        "",
    ]
    return "\n".join(lines)


def _step(path, after):
    before = read_current(path)
    if after == before:
        action = "none"
    elif after is None:
        action = "remove"
    else:
        action = "write"
    return {"path": path, "action": action, "before": before, "after": after}


def vse_rule_files(rules_dir=RULES_DIR):
    """The VSE rule files present in ``rules_dir`` (names)."""
    try:
        names = os.listdir(rules_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(RULES_PREFIX) and n.endswith(RULES_SUFFIX)
                  and n != DEFAULT_RULES)


def plan(vse, users, guests, uuids=(), state="present", rules_dir=RULES_DIR, actions=DOMAIN_ACTIONS,
         admin_group=ADMIN_GROUP):
    """The steps that make ``rules_dir`` grant VSE ``vse``'s guests to ``users``: the VSE's file
    (see :func:`plan_file`) and the default file (present while any VSE file is)."""
    step = plan_file(vse, users, guests, uuids, state, rules_dir, actions)
    others = [n for n in vse_rule_files(rules_dir) if n != os.path.basename(step["path"])]
    default = render_default_rules(admin_group) if (others or step["after"] is not None) else None
    steps = [_step(os.path.join(rules_dir, DEFAULT_RULES), default), step]
    # The default file is in place before a VSE file grants anything and goes only after the last
    # VSE file: in between, no other guest is ever left to libvirt's open defaults.
    return steps if step["after"] is not None else steps[::-1]


def plan_file(vse, users, guests, uuids=(), state="present", rules_dir=RULES_DIR, actions=DOMAIN_ACTIONS):
    """What :func:`apply` would do to VSE ``vse``'s file: ``{"path", "action", "before", "after"}``.

    ``action`` is ``write`` (create or change the file), ``remove`` or ``none``. With state absent,
    or no user listed, the file goes.
    """
    if state not in ("present", "absent"):
        raise AccessError("state", "%s is not present or absent" % _shown(state))
    path = rules_path(vse, rules_dir)
    after = render_rules(vse, users, guests, uuids, actions) if state == "present" else None
    return _step(path, after)


def diff(steps):
    """Ansible --diff entries (a list, one per file that changes) for a plan."""
    if isinstance(steps, dict):
        steps = [steps]
    return [{"before": s["before"] or "", "after": s["after"] or "",
             "before_header": s["path"], "after_header": s["path"]} for s in steps if s["action"] != "none"]


def _run_write_rules(_ctx, step):
    # polkitd reads the file as its own user; the rules directory is polkit's, never created here.
    write_text_atomic(step.target, step.after, mode=0o644, make_dirs=False)


def _run_remove_rules(_ctx, step):
    try:
        os.unlink(step.target)
    except FileNotFoundError:
        pass


WRITE_RULES = Action("write_rules", _run_write_rules, phase="access")
REMOVE_RULES = Action("remove_rules", _run_remove_rules, phase="access")


def to_plan(steps):
    """The file decisions of :func:`plan` as a ``_plan.Plan`` (files already right are left out)."""
    if isinstance(steps, dict):
        steps = [steps]
    plan = Plan()
    for step in steps:
        if step["action"] == "write":
            plan.add(WRITE_RULES, step["path"], step["before"], step["after"])
        elif step["action"] == "remove":
            plan.add(REMOVE_RULES, step["path"], step["before"], None)
    return plan


def apply_all(steps, check_mode=False):
    """Carry out :func:`plan`'s decisions through the one executor; True when anything changed (or would)."""
    plan = to_plan(steps)
    execute(plan, Context(), check_mode)
    return plan.changed


def apply(step, check_mode=False):
    """One file's decision (:func:`plan_file`), as :func:`apply_all`. Check mode writes nothing."""
    return apply_all([step], check_mode)
