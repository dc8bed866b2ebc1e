"""Multinode test bed helpers: extra libvirt nodes on this machine, and guests that can move.

The extra nodes are started by tools/multinode/nodes.sh (namespaced libvirtds, see its header).
Guests here are testbed guests (tools/testbed.py) whose overlay disk is on the machine's file
system, which every node sees at the same path, with DAC relabelling off for that disk so that
neither daemon takes the file from the other, and the overlay owned by the QEMU user.
"""

import os
import subprocess
import time
from xml.etree import ElementTree

import libvirt

import testbed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODES_SH = os.path.join(ROOT, "tools", "multinode", "nodes.sh")
NODES_DIR = os.environ.get("HPCVIRT_NODES_DIR", "/var/lib/hpcvirt/nodes")
SOCKET_DIR = os.path.join(NODES_DIR, "migrate")
QEMU_USER = "libvirt-qemu"


def node_uri(name):
    return "qemu+unix:///system?socket=%s/%s/run/libvirt-sock" % (NODES_DIR, name)


NODE1 = node_uri("hpcvirt-node1")   # the main libvirtd, through its alias socket
NODE2 = node_uri("hpcvirt-node2")
NODE3 = node_uri("hpcvirt-node3")


def nodes(command, count=2):
    return subprocess.run([NODES_SH, command, str(count)], capture_output=True, text=True, timeout=120, check=True)


def libvirtd_pid(name):
    with open(os.path.join(NODES_DIR, name, "libvirtd.pid")) as handle:
        return int(handle.read().strip())


def qemu_owner():
    import pwd
    entry = pwd.getpwnam(QEMU_USER)
    return entry.pw_uid, entry.pw_gid


def shared_guest_xml(name, disk, vcpus=1, memory_mib=128, hb_ms=100):
    root = ElementTree.fromstring(testbed.guest_xml(name, disk, vcpus=vcpus, memory_mib=memory_mib, hb_ms=hb_ms))
    source = root.find("devices/disk/source")
    ElementTree.SubElement(source, "seclabel", model="dac", relabel="no")
    return ElementTree.tostring(root, encoding="unicode")


def boot_shared(conn, name, vcpus=1, memory_mib=128, hb_ms=100, timeout=90):
    """Define and start a movable guest on ``conn`` (node 1), wait for its first heartbeat."""
    testbed.remove(conn, name)
    os.makedirs(testbed.CONSOLE_DIR, exist_ok=True)
    disk = testbed.create_overlay(conn, name)
    uid, gid = qemu_owner()
    os.chown(disk, uid, gid)
    dom = conn.defineXML(shared_guest_xml(name, disk, vcpus=vcpus, memory_mib=memory_mib, hb_ms=hb_ms))
    dom.create()
    testbed.wait_for_beats(name, 1, timeout)
    return dom


def find(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def remove_everywhere(conns, name):
    """Destroy and undefine ``name`` on every node (with its managed save and snapshots metadata),
    then delete its overlay and console log (testbed.remove on node 1 owns the files)."""
    for conn in conns[1:]:
        dom = find(conn, name)
        if dom is None:
            continue
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError:
            pass
    testbed.remove(conns[0], name)


def wait_until(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("%s not reached within %ss" % (what, timeout))


# pytest fixtures: test modules import them (``from multinode_nodes import multinode``).
try:
    import pytest
except ImportError:  # the benchmark imports this module without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def multinode():
        """hpcvirt-node2 running for the session (started here, stopped afterwards)."""
        nodes("start")
        yield {"node1": NODE1, "node2": NODE2}
        nodes("stop")

    @pytest.fixture
    def two_nodes(multinode):
        """Both nodes' connections; node2 restarted first if an earlier test killed it."""
        nodes("start")
        conns = [libvirt.open(NODE1), libvirt.open(NODE2)]
        yield conns
        for conn in conns:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    @pytest.fixture
    def movable_guest(two_nodes):
        """Factory: boot a movable guest on node 1; removed from every node afterwards."""
        made = []

        def boot(name, **kwargs):
            made.append(name)
            return boot_shared(two_nodes[0], name, **kwargs)

        yield boot
        nodes("start")
        conns = [libvirt.open(NODE1), libvirt.open(NODE2)]
        for name in made:
            remove_everywhere(conns, name)
