"""Live migration between two real libvirt nodes on this machine (tools/multinode/nodes.sh)."""

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import libvirt
import pytest
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import metadata_from_domain_xml

import testbed
from conftest import ROOT, ansible_env, run_module
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


def move_args(name, source, dest, **extra):
    args = {"name": name, "uri": source, "dest_uri": dest, "socket_dir": SOCKET_DIR, "unsafe": True,
            "vcpu_overcommit": 0}
    args.update(extra)
    return args


def move(name, source, dest, check=False, **extra):
    return run_module(MODULE, move_args(name, source, dest, **extra), check=check, diff=True)


def killed_move(kill_after, args):
    """Run the migrate module as its own process, SIGKILLed right after its ``kill_after``-th step."""
    path = os.path.join(ROOT, ".build", "tmp", "migrate-%s.json" % uuid.uuid4().hex[:8])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    try:
        return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "integration", "kill_harness.py"),
                               "migrate", str(kill_after), path], capture_output=True, text=True, timeout=300,
                              check=False, env=ansible_env())
    finally:
        os.unlink(path)


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
        assert [s["action"] for s in checked["plan"]] == ["migrate", "place", "record"]
        assert running(node1, name) and find(node2, name) is None  # check mode moved nothing
        # --diff: where the guest is, its state and placement on each node, before and after.
        assert checked["diff"]["before"]["destination"] is None and checked["diff"]["after"]["source"] is None
        assert checked["diff"]["before"]["source"]["state"] == "running"
        arriving = checked["diff"]["after"]["destination"]
        assert arriving["state"] == "running" and arriving["persistent"]
        assert arriving["placement"]["scheduler"]["cpu_shares"] == 512

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


def where(conns, name):
    """The nodes (indexes) the guest runs on, and those that define it."""
    doms = [find(conn, name) for conn in conns]
    return ([i for i, dom in enumerate(doms) if dom is not None and dom.isActive()],
            [i for i, dom in enumerate(doms) if dom is not None and dom.isPersistent()])


def test_migration_killed_after_every_step_converges_and_never_loses_the_guest(two_nodes, movable_guest):
    """SIGKILL the module after each step of its plan, both ways; the next run converges."""
    node1, node2 = two_nodes
    name = "hpcvirt-mig-k"
    movable_guest(name)
    first = testbed.read_beats(name)[-1]
    hosts = [node1.getHostname(), node2.getHostname()]
    online = [{i for i, up in enumerate(conn.getCPUMap()[1]) if up} for conn in (node1, node2)]
    # Node 2 gets a pool of CPU 0 only, node 1 all its CPUs: every hop has pins to change.
    ways = [(NODE1, NODE2, 0, 1, {"dest_pool": "0"}), (NODE2, NODE1, 1, 0, {})]
    pools = [online[0], {0}]
    steps = len(move(name, NODE1, NODE2, check=True, cpu_shares=512, dest_pool="0")["plan"])
    assert steps == 3
    rounds = 0
    with testbed.HeartbeatTail(name) as tail:
        for kill_after in range(1, steps + 1):
            for source, dest, src, dst, pool in ways:
                args = move_args(name, source, dest, cpu_shares=512, **pool)
                killed = killed_move(kill_after, args)
                assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
                # Killed after a step: the guest runs on exactly one node, defined there.
                active, persistent = where(two_nodes, name)
                assert active == [dst] and persistent == [dst], (kill_after, source, active, persistent)

                again = move(name, source, dest, cpu_shares=512, **pool)
                assert not again.get("failed"), again.get("msg")
                assert again["action"] == "arrived"
                assert again["changed"] == (kill_after < steps), again["plan"]
                assert [s["action"] for s in again["plan"]] == ["place", "record"][kill_after - 1:], again["plan"]
                settled = move(name, source, dest, cpu_shares=512, **pool)
                assert not settled["changed"], settled["plan"]

                dom = two_nodes[dst].lookupByName(name)
                assert {i for i, up in enumerate(dom.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)[0]) if up} \
                    == pools[dst]
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):  # live and persistent definitions
                    meta = metadata_from_domain_xml(dom.XMLDesc(flags))
                    assert meta["migration"]["to_host"] == hosts[dst] and meta["migration"]["from_host"] == hosts[src]
                    assert meta["migration"]["home_host"] == hosts[0]
                    assert meta["placement"]["cpu_shares"] == "512" and meta["placement"]["mode"] == "shared"
                testbed.wait_for_beats(name, 3)
                rounds += 1
    assert rounds == 2 * steps
    beats = [beat for _unused, beat in tail.beats]
    assert tail.restarts() == 0, "the guest rebooted or its heartbeat went backwards"
    assert all(b["boot"] == first["boot"] for b in beats)
    assert beats[-1]["seq"] > first["seq"] + 10
