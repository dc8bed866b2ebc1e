"""Live migration between two real libvirt nodes on this machine (tools/multinode/nodes.sh)."""

import os
import signal
import threading

import libvirt
import pytest

import testbed
from conftest import run_module
# The fixtures below are used by name in test arguments.
from multinode_nodes import (  # noqa: F401 pylint: disable=unused-import
    NODE1,
    NODE2,
    SOCKET_DIR,
    find,
    libvirtd_pid,
    movable_guest,
    multinode,
    two_nodes,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaced libvirtds")

MODULE = "hpcvirt.regime.migrate"


def move(name, source, dest, check=False, **extra):
    args = {"name": name, "uri": source, "dest_uri": dest, "socket_dir": SOCKET_DIR, "unsafe": True,
            "vcpu_overcommit": 0}
    args.update(extra)
    return run_module(MODULE, args, check=check, diff=True)


def running(conn, name):
    dom = find(conn, name)
    return dom is not None and dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_round_trip_keeps_the_guest_running(two_nodes, movable_guest):
    node1, node2 = two_nodes
    name = "hpcvirt-mig-trip"
    movable_guest(name)
    first = testbed.read_beats(name)[-1]
    with testbed.HeartbeatTail(name) as tail:
        checked = move(name, NODE1, NODE2, check=True, cpu_shares=512)
        assert checked["changed"] and not checked.get("failed"), checked
        assert [s["action"] for s in checked["plan"]] == ["migrate", "place"]
        assert running(node1, name) and find(node2, name) is None  # check mode moved nothing

        there = move(name, NODE1, NODE2, cpu_shares=512)
        assert there["changed"] and not there.get("failed"), there.get("msg")
        assert [s["action"] for s in there["plan"]] == [s["action"] for s in checked["plan"]]
        assert running(node2, name) and find(node1, name) is None
        assert there["stats"]["downtime_ms"] is not None and there["stats"]["total_ms"] > 0
        assert there["stats"]["data_transferred_bytes"] > 0
        assert node2.lookupByName(name).isPersistent()
        testbed.wait_for_beats(name, 5)

        again = move(name, NODE1, NODE2, cpu_shares=512)
        assert not again["changed"] and again["action"] == "arrived", again

        back = move(name, NODE2, NODE1)
        assert back["changed"] and not back.get("failed"), back.get("msg")
        assert running(node1, name) and find(node2, name) is None
        testbed.wait_for_beats(name, 5)
    beats = [beat for _unused, beat in tail.beats]
    assert tail.restarts() == 0, "the guest rebooted or its heartbeat went backwards"
    assert all(b["boot"] == first["boot"] for b in beats)
    assert beats[-1]["seq"] > first["seq"] + 10

    dom = node1.lookupByName(name)
    # Placement on arrival at node 1: the pool is every online CPU, cpu_shares from the metadata
    # the first hop recorded.
    online = {i for i, up in enumerate(node1.getCPUMap()[1]) if up}
    assert {i for i, up in enumerate(dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)[0]) if up} == online
    assert dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)["cpu_shares"] == 512
    assert back["metadata"]["migration"]["home_host"] == node1.getHostname()
    assert back["metadata"]["placement"]["cpu_shares"] == "512"


def test_destination_without_capacity_is_refused_before_anything_moves(two_nodes, movable_guest):
    node1, node2 = two_nodes
    name = "hpcvirt-mig-full"
    movable_guest(name)
    for check in (True, False):
        memory = move(name, NODE1, NODE2, check=check, reserve_memory_mb=10 ** 8)
        assert memory.get("failed") and not memory["changed"], memory
        assert "cannot take guest" in memory["msg"] and "memory" in memory["msg"]
        assert "nothing was moved" in memory["msg"]
    no_pool = move(name, NODE1, NODE2, dest_pool="")
    assert no_pool.get("failed") and "no shared pool CPUs" in no_pool["msg"], no_pool
    crowded = move(name, NODE1, NODE2, dest_pool="0", vcpu_overcommit=0.5)
    assert crowded.get("failed") and "overcommit" in crowded["msg"], crowded
    assert running(node1, name) and find(node2, name) is None
    testbed.wait_for_beats(name, 3)


def test_destination_daemon_dying_mid_way_leaves_the_guest_on_the_source(two_nodes, movable_guest):
    node1, node2 = two_nodes
    name = "hpcvirt-mig-kill"
    movable_guest(name)
    first = testbed.read_beats(name)[-1]
    result = {}

    def slow_move():
        result.update(move(name, NODE1, NODE2, bandwidth=1))

    mover = threading.Thread(target=slow_move)
    with testbed.HeartbeatTail(name) as tail:
        mover.start()
        # The incoming guest appears on node 2 once the migration is under way.
        wait_until(lambda: find(node2, name) is not None, 90, "incoming guest on node 2")
        os.kill(libvirtd_pid("hpcvirt-node2"), signal.SIGKILL)
        mover.join(300)
        assert not mover.is_alive()
        assert result.get("failed") and not result["changed"], result
        assert "still running on the source" in result["msg"], result["msg"]
        assert result["guest_on"] == "source"
        assert running(node1, name)
        testbed.wait_for_beats(name, 5)
    assert tail.restarts() == 0
    assert testbed.read_beats(name)[-1]["boot"] == first["boot"]
