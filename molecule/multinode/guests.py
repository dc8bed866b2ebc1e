# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test guests of the multinode scenario: movable tiny guests and their heartbeats.

Run with the controller's Python (it has libvirt-python)::

    guests.py boot URI NAME [--vcpus N]      define and start a movable guest on URI, pinned to CPU 0
    guests.py beat NAME [--wait N]           wait for N new heartbeats, print the last as JSON with
                                             the history of the console: boots seen, restarts
    guests.py remove NAME URI [URI ...]      remove the guest from every node, its overlay and console log
    guests.py observe --node HOST=URI ... [--wait N] NAME ...
                                             JSON {name: {running, defined, preempted: [hosts], beat}},
                                             after N new heartbeats of the guests running somewhere

A movable guest (tests/integration/multinode_nodes.py) has its overlay on the machine's file system,
owned by the QEMU user, with DAC relabelling off, so every node of the test bed can run it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from xml.etree import ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "tools"), os.path.join(ROOT, "tests", "integration")]

import libvirt  # noqa: E402 pylint: disable=wrong-import-position
import multinode_nodes  # noqa: E402 pylint: disable=wrong-import-position
import testbed  # noqa: E402 pylint: disable=wrong-import-position


def boot(uri, name, vcpus):
    conn = libvirt.open(uri)
    remove(name, [uri])
    os.makedirs(testbed.CONSOLE_DIR, exist_ok=True)
    disk = testbed.create_overlay(conn, name)
    os.chown(disk, *multinode_nodes.qemu_owner())
    root = ElementTree.fromstring(multinode_nodes.shared_guest_xml(name, disk, vcpus=vcpus))
    root.find("vcpu").set("cpuset", "0")  # off the CPUs other tests carve into partitions
    dom = conn.defineXML(ElementTree.tostring(root, encoding="unicode"))
    dom.create()
    return testbed.wait_for_beats(name, 1, 120)


def remove(name, uris):
    for uri in uris:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError:
            continue  # a node that is not running has nothing of ours
        dom = multinode_nodes.find(conn, name)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        conn.close()
    for path in (os.path.join(testbed.INSTANCE_DIR, name + ".qcow2"), testbed.console_path(name)):
        if os.path.exists(path):
            os.unlink(path)


def history(beats):
    """The last heartbeat, the boot ids seen and how often the counter restarted (a reboot)."""
    restarts = sum(1 for before, after in zip(beats, beats[1:])
                   if after["boot"] != before["boot"] or after["seq"] < before["seq"])
    last = dict(beats[-1]) if beats else {}
    last.update(boots=sorted(set(b["boot"] for b in beats)), restarts=restarts, count=len(beats))
    return last


def observe(nodes, names, wait):
    """Where each guest is (inventory hosts), and its heartbeat history."""
    seen = {name: {"running": [], "defined": [], "preempted": []} for name in names}
    for spec in nodes:
        host, uri = spec.split("=", 1)
        conn = libvirt.open(uri)
        for name in names:
            dom = multinode_nodes.find(conn, name)
            if dom is None:
                continue
            seen[name]["defined"].append(host)
            if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                seen[name]["running"].append(host)
            if dom.hasManagedSaveImage(0):
                seen[name]["preempted"].append(host)
        conn.close()
    for name in names:
        if wait and seen[name]["running"]:
            testbed.wait_for_beats(name, wait, 120)
        seen[name]["beat"] = history(testbed.read_beats(name))
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_boot = sub.add_parser("boot")
    p_boot.add_argument("uri")
    p_boot.add_argument("name")
    p_boot.add_argument("--vcpus", type=int, default=1)
    p_beat = sub.add_parser("beat")
    p_beat.add_argument("name")
    p_beat.add_argument("--wait", type=int, default=0)
    p_remove = sub.add_parser("remove")
    p_remove.add_argument("name")
    p_remove.add_argument("uris", nargs="+")
    p_observe = sub.add_parser("observe")
    p_observe.add_argument("--node", action="append", default=[], help="HOST=URI")
    p_observe.add_argument("--wait", type=int, default=0)
    p_observe.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "boot":
        print(json.dumps(boot(args.uri, args.name, args.vcpus)))
    elif args.command == "beat":
        if args.wait:
            testbed.wait_for_beats(args.name, args.wait, 120)
        print(json.dumps(history(testbed.read_beats(args.name))))
    elif args.command == "observe":
        print(json.dumps(observe(args.node, args.names, args.wait)))
    else:
        remove(args.name, args.uris)
    return 0


if __name__ == "__main__":
    sys.exit(main())
