# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helper program for Slurm's node_features/helpers plugin: a node's regime as a node feature.

Slurm's slurmd runs it in two ways (helpers.conf: ``Feature=space_shared Helper=<this program>``,
one line per feature):

``hpcvirt-node-features``            (no argument) print the node's active regime feature, one per
                                     line: ``space_shared`` or ``time_shared``; nothing for a
                                     ``mixed`` or unknown node. slurmd does this when it starts and
                                     registers, and reports the result as the node's ActiveFeatures.
``hpcvirt-node-features FEATURE``    switch the node to that regime. slurmd does this when
                                     slurmctld asks it to reboot the node for a job whose
                                     ``--constraint`` names a feature the node does not have
                                     active; slurmd then runs RebootProgram.

Switching runs a command (``set_command``, by default the collection's reconfigure playbook for
this node) and succeeds only when the node's recorded regime is the requested one afterwards.

Settings come from an INI file, section ``[node-features]`` (``$HPCVIRT_NODE_FEATURES_CONF``,
default ``/etc/hpcvirt/node-features.conf``); every key is optional:

``node_name``         this node's name in Slurm and in the inventory (default: short host name)
``regime_file``       where the regime is recorded (default ``/var/lib/hpcvirt/regime.json``)
``root``              file system root for inferring the regime (default ``/``)
``collections_path``  directory holding ``ansible_collections/hpcvirt/regime`` (default: found
                      from this program's own place, else ``/usr/local/lib/hpcvirt``)
``inventory``         inventory for the default command (default ``/etc/hpcvirt/inventory``)
``set_command``       command that switches the regime; ``{feature}``, ``{node}``,
                      ``{collection}`` and ``{inventory}`` are substituted; split like a shell
                      would, run without a shell, with ``collections_path`` first on
                      ``$ANSIBLE_COLLECTIONS_PATH``
``log_file``          append a line per call here (default: standard error only)
"""

from __future__ import annotations

import configparser
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys

FEATURES = ("space_shared", "time_shared")
DEFAULT_CONF = "/etc/hpcvirt/node-features.conf"
# Slurm holds the node for the job that asked for the switch, so the playbook must not drain it:
# regime_scheduler=none leaves Slurm to Slurm.
DEFAULT_SET_COMMAND = ("ansible-playbook {collection}/playbooks/reconfigure.yml -i {inventory} "
                       "--limit {node} -e regime={feature} -e regime_scheduler=none")
COLLECTION_PARTS = ("ansible_collections", "hpcvirt", "regime")


def own_collections_path():
    """The directory holding ansible_collections/ when this program runs from inside the collection."""
    here = os.path.dirname(os.path.realpath(__file__))
    collection = os.path.dirname(os.path.dirname(os.path.dirname(here)))  # roles/slurm/files -> root
    if os.path.isdir(os.path.join(collection, "plugins", "module_utils")):
        # The collection may be a plain checkout: find the ansible_collections link beside it.
        for candidate in (os.path.join(collection, ".build", "collections"),
                          os.path.dirname(os.path.dirname(os.path.dirname(collection)))):
            if os.path.isdir(os.path.join(candidate, *COLLECTION_PARTS)):
                return candidate
    return "/usr/local/lib/hpcvirt"


def load_settings(environ):
    path = environ.get("HPCVIRT_NODE_FEATURES_CONF", DEFAULT_CONF)
    parser = configparser.ConfigParser(interpolation=None)
    if os.path.exists(path):
        parser.read(path)
    section = parser["node-features"] if parser.has_section("node-features") else {}
    collections_path = section.get("collections_path") or own_collections_path()
    return {
        "conf": path,
        "node_name": section.get("node_name") or socket.gethostname().split(".")[0],
        "regime_file": section.get("regime_file") or "/var/lib/hpcvirt/regime.json",
        "root": section.get("root") or "/",
        "collections_path": collections_path,
        "collection": os.path.join(collections_path, *COLLECTION_PARTS),
        "inventory": section.get("inventory") or "/etc/hpcvirt/inventory",
        "set_command": section.get("set_command") or DEFAULT_SET_COMMAND,
        "log_file": section.get("log_file") or None,
    }


def log(settings, message):
    line = "%s hpcvirt-node-features[%s] %s: %s" % (
        datetime.datetime.now().isoformat(timespec="seconds"), os.getpid(), settings["node_name"], message)
    sys.stderr.write(line + "\n")
    if settings["log_file"]:
        try:
            with open(settings["log_file"], "a") as handle:
                handle.write(line + "\n")
        except OSError:
            pass


def recorded_regime(settings):
    """The regime the last regime change recorded, or None when there is no record."""
    try:
        with open(settings["regime_file"]) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RuntimeError("cannot read %s: %s" % (settings["regime_file"], exc))
    return data.get("regime") if isinstance(data, dict) else None


def inferred_regime(settings):
    """The regime the node's CPU layout amounts to, as node_info infers it (the collection's code)."""
    if settings["collections_path"] not in sys.path:
        sys.path.insert(0, settings["collections_path"])
    from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
    from ansible_collections.hpcvirt.regime.plugins.module_utils._node import infer_regime, observe_layout
    from ansible_collections.hpcvirt.regime.plugins.module_utils._state import LAYOUT_FILE, read_json
    from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology

    root = settings["root"]
    return infer_regime(observe_layout(read_topology(root), detect_layout(root), read_json(root, LAYOUT_FILE)))


def current_regime(settings):
    """(regime, source): recorded when there is a record, else inferred; (None, why) when unknown."""
    regime = recorded_regime(settings)
    if regime:
        return regime, "recorded"
    try:
        return inferred_regime(settings), "inferred"
    except Exception as exc:  # an unreadable node must not make slurmd fail: report no feature
        return None, "unknown (%s: %s)" % (type(exc).__name__, exc)


def get_state(settings):
    regime, source = current_regime(settings)
    if regime in FEATURES:
        print(regime)
    log(settings, "active feature: %s (%s)" % (regime if regime in FEATURES else "none", source))
    return 0


def substitute(text, values):
    """``{feature}`` and the other known placeholders replaced; any other braces left as they are."""
    for key, value in values.items():
        text = text.replace("{%s}" % key, value)
    return text


def command_environment(settings, environ):
    """slurmd's environment, with this collection findable by ansible-playbook."""
    env = dict(environ)
    paths = [settings["collections_path"]] + [p for p in env.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def set_state(settings, feature):
    if feature not in FEATURES:
        log(settings, "refusing unknown feature %r (known: %s)" % (feature, ", ".join(FEATURES)))
        return 2
    before, source = current_regime(settings)
    if before == feature:
        log(settings, "already %s (%s); nothing to do" % (feature, source))
        return 0
    values = {"feature": feature, "node": settings["node_name"], "collection": settings["collection"],
              "inventory": settings["inventory"]}
    argv = [substitute(part, values) for part in shlex.split(settings["set_command"])]
    env = command_environment(settings, os.environ)
    log(settings, "switching %s -> %s: %s" % (before, feature, " ".join(shlex.quote(a) for a in argv)))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, check=False, env=env)
    except OSError as exc:
        log(settings, "cannot run %s: %s" % (argv[0], exc))
        return 1
    tail = proc.stdout.strip().splitlines()[-5:]
    if proc.returncode != 0:
        log(settings, "switch to %s failed (exit %d): %s" % (feature, proc.returncode, " | ".join(tail)))
        return 1
    after, source = current_regime(settings)
    if after != feature:
        log(settings, "command succeeded but the node's regime is %s (%s), not %s" % (after, source, feature))
        return 1
    log(settings, "switched to %s" % feature)
    return 0


def main(argv=None, environ=None):
    argv = sys.argv[1:] if argv is None else argv
    settings = load_settings(os.environ if environ is None else environ)
    if not argv:
        return get_state(settings)
    if len(argv) == 1 and not argv[0].startswith("-"):
        return set_state(settings, argv[0])
    sys.stderr.write("usage: hpcvirt-node-features [FEATURE]\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
