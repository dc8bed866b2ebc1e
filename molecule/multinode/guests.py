# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test guests of the multinode scenario: movable tiny guests and their heartbeats.

Run with the controller's Python (it has libvirt-python)::

    guests.py boot URI NAME [--vcpus N]      define and start a movable guest on URI, pinned to CPU 0
    guests.py beat NAME [--wait N]           wait for N new heartbeats, print the last as JSON
    guests.py remove NAME URI [URI ...]      remove the guest from every node, its overlay and console log

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
    args = parser.parse_args(argv)
    if args.command == "boot":
        print(json.dumps(boot(args.uri, args.name, args.vcpus)))
    elif args.command == "beat":
        beat = testbed.wait_for_beats(args.name, args.wait, 120) if args.wait else testbed.read_beats(args.name)[-1]
        print(json.dumps(beat))
    else:
        remove(args.name, args.uris)
    return 0


if __name__ == "__main__":
    sys.exit(main())
