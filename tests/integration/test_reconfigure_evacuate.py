"""reconfigure.yml with reconfigure_evacuate: a time-shared guest the space_shared layout has no
room for migrates to a node that stays time-shared, and comes home with the change back.

The node being reconfigured is this machine's main libvirtd; the node that stays time-shared is a
namespaced libvirtd (tools/multinode/nodes.sh). The change uses overflow fail, so it can only
succeed when the evacuation made room.
"""

import os

import libvirt
import pytest

import testbed
from conftest import run_playbook
from multinode_nodes import (  # noqa: F401 pylint: disable=unused-import
    NODE1,
    NODE2,
    SOCKET_DIR,
    find,
    movable_guest,
    multinode,
    two_nodes,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaced libvirtds")

KEEP, MOVE = "hpcvirt-it-rev-keep", "hpcvirt-it-rev-move"
INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: /usr/bin/python3
  children:
    hpc_nodes:
      hosts:
        main:
          hpcvirt_uri: qemu:///system
          hpcvirt_migration_uri: "{node1}"
    time_shared:
      hosts:
        spare:
          hpcvirt_uri: "{node2}"
"""
SETTINGS = {
    "reconfigure_hosts": "main",
    "reconfigure_evacuate": True,
    "regime_layouts": {"space_shared": {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]},
                       "time_shared": {"housekeeping": "0"}},
    "regime_placements": {"space_shared": [{"name": KEEP, "placement": "dedicated", "partition": "p1"}]},
    "regime_overflow": "fail",
    "evacuate_socket_dir": SOCKET_DIR,
    "evacuate_unsafe": True,
    "evacuate_guest_pattern": "^hpcvirt-it-rev-",
    "evacuate_reserve_memory_mb": 128,
}


@pytest.fixture
def inventory(tmp_path, restored_node):
    path = tmp_path / "hosts.yml"
    path.write_text(INVENTORY.format(node1=NODE1, node2=NODE2))
    return str(path)


def reconfigure(inventory, regime):
    return run_playbook("playbooks/reconfigure.yml", inventory=inventory, extra_vars=dict(SETTINGS, regime=regime))


def running(conn, name):
    dom = find(conn, name)
    return dom is not None and dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_evacuation_makes_room_for_space_shared_and_restore_brings_the_guest_home(two_nodes, movable_guest,
                                                                                  inventory):
    main, spare = two_nodes
    movable_guest(KEEP)
    movable_guest(MOVE)
    boot = testbed.read_beats(MOVE)[-1]["boot"]

    to_space = reconfigure(inventory, "space_shared")
    assert to_space.returncode == 0, to_space.stdout[-3000:] + to_space.stderr[-2000:]
    assert running(spare, MOVE) and find(main, MOVE) is None           # migrated, not preempted
    keep = main.lookupByName(KEEP)
    assert keep.isActive() and [sorted(i for i, on in enumerate(m) if on) for m in keep.vcpuPinInfo(0)] == [[1]]
    last = testbed.wait_for_beats(MOVE, 2, timeout=30)                # beating on the other node
    assert last["boot"] == boot

    back = reconfigure(inventory, "time_shared")
    assert back.returncode == 0, back.stdout[-3000:] + back.stderr[-2000:]
    assert running(main, MOVE) and find(spare, MOVE) is None           # home again
    home = testbed.wait_for_beats(MOVE, 2, timeout=30)
    assert home["boot"] == boot and home["seq"] > last["seq"]
    assert running(main, KEEP)
