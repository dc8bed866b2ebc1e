"""The inventory plugin hpcvirt.regime.guests against real libvirt nodes: this machine's libvirtd
(node 1, read as a local node) and a namespaced libvirtd of tools/multinode (node 2), through
ansible-inventory as AWX runs an inventory source; its cache; an unreachable node."""

import json
import os
import subprocess
import sys

import libvirt
import pytest

import testbed
from conftest import ROOT, ansible_env
from multinode_nodes import (  # noqa: F401 pylint: disable=unused-import
    NODE2,
    NODES_DIR,
    find,
    movable_guest,
    multinode,
    node_uri,
    remove_everywhere,
    shared_guest_xml,
    two_nodes,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import NAMESPACE, PREFIX, build_metadata

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaced libvirtds")

RUNNING, DEFINED = "hpcvirt-it-inv-run", "hpcvirt-it-inv-def"
UNREACHABLE = node_uri("hpcvirt-node9")


def source(tmp_path, nodes, **options):
    lines = ["plugin: hpcvirt.regime.guests", "nodes:"]
    lines += ['  - {name: %s, uri: "%s"}' % (name, uri) for name, uri in nodes]
    lines += ["%s: %s" % (key, json.dumps(value)) for key, value in options.items()]
    path = tmp_path / "hpcvirt.guests.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def inventory(path, *args):
    env = ansible_env()
    env["ANSIBLE_INVENTORY_UNPARSED_FAILED"] = "1"   # as AWX runs inventory updates
    env["ANSIBLE_INVENTORY_ENABLED"] = "hpcvirt.regime.guests"
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-inventory"), "-i", path, "--list", "--export"]
    return subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def plain(value):
    """ansible-inventory's JSON without the trust markers of untrusted strings."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def members(data, group):
    return set(data.get(group, {}).get("hosts", []))


@pytest.fixture
def guests(two_nodes, movable_guest):
    node1, node2 = two_nodes
    movable_guest(RUNNING)
    # A defined, shut-off guest on node 2 with the hpcvirt metadata a VSE deployment records.
    remove_everywhere([node1, node2], DEFINED)
    disk = testbed.create_overlay(node1, DEFINED)
    dom = node2.defineXML(shared_guest_xml(DEFINED, disk))
    meta = {"vse": {"name": "web-tier"}, "placement": {"mode": "shared"}, "addresses": {"net0": "192.0.2.20"}}
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, build_metadata(meta, namespaced=False), PREFIX, NAMESPACE,
                    libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    yield node1, node2
    remove_everywhere([node1, node2], DEFINED)


def test_guests_of_two_nodes_grouped_with_their_variables(guests, tmp_path):
    path = source(tmp_path, [("node1", "qemu:///system"), ("node2", NODE2)])
    proc = inventory(path)
    assert proc.returncode == 0, proc.stderr
    data = plain(json.loads(proc.stdout))
    hostvars = data["_meta"]["hostvars"]

    run = hostvars[RUNNING]
    assert RUNNING in members(data, "hpcvirt_node_node1") and RUNNING in members(data, "hpcvirt_state_running")
    assert run["hpcvirt_node_uri"] == "qemu:///system"
    assert run["hpcvirt_node_regime_source"] in ("recorded", "inferred")   # read on this node
    assert RUNNING in members(data, "hpcvirt_regime_" + run["hpcvirt_node_regime"])
    assert run["hpcvirt_console"] == testbed.console_path(RUNNING)
    assert RUNNING in members(data, "hpcvirt_placement_" + run["hpcvirt_placement"])
    assert run["hpcvirt_placement_observed"] in ("shared", "dedicated", "custom")

    defined = hostvars[DEFINED]
    assert DEFINED in members(data, "hpcvirt_node_node2") and DEFINED in members(data, "hpcvirt_state_shutoff")
    assert DEFINED in members(data, "hpcvirt_vse_web_tier") and DEFINED in members(data, "hpcvirt_placement_shared")
    # node 2 is not this machine: its regime comes from its guests' recorded placements.
    assert defined["hpcvirt_node_regime"] == "time_shared" and defined["hpcvirt_node_regime_source"] == "guests"
    assert DEFINED in members(data, "hpcvirt_regime_time_shared")
    assert defined["hpcvirt_addresses"] == {"net0": "192.0.2.20"} and defined["ansible_host"] == "192.0.2.20"
    assert defined["hpcvirt_placement_observed"] is None and defined["hpcvirt_vse"] == "web-tier"


def test_cache_serves_the_last_read_until_flushed(guests, tmp_path):
    _node1, node2 = guests
    cache_dir = tmp_path / "cache"
    path = source(tmp_path, [("node2", NODE2)], cache=True, cache_plugin="ansible.builtin.jsonfile",
                  cache_connection=str(cache_dir), cache_timeout=3600)
    first = inventory(path)
    assert first.returncode == 0, first.stderr
    assert DEFINED in plain(json.loads(first.stdout))["_meta"]["hostvars"]
    assert os.listdir(cache_dir)

    node2.lookupByName(DEFINED).undefine()
    cached = inventory(path)
    assert DEFINED in plain(json.loads(cached.stdout))["_meta"]["hostvars"]
    fresh = inventory(path, "--flush-cache")
    assert fresh.returncode == 0, fresh.stderr
    assert DEFINED not in plain(json.loads(fresh.stdout))["_meta"]["hostvars"]


def test_an_unreachable_node_is_named(guests, tmp_path):
    path = source(tmp_path, [("node1", "qemu:///system"), ("node9", UNREACHABLE)])
    proc = inventory(path)
    assert proc.returncode != 0
    assert "hpcvirt.regime.guests: node node9: cannot connect to libvirt at %s" % UNREACHABLE in proc.stderr
    assert "Traceback" not in proc.stderr

    path = source(tmp_path, [("node1", "qemu:///system"), ("node9", UNREACHABLE)], unreachable="warn")
    proc = inventory(path)
    assert proc.returncode == 0, proc.stderr
    assert "node node9: cannot connect to libvirt" in proc.stderr and "its guests are left out" in proc.stderr
    assert RUNNING in plain(json.loads(proc.stdout))["_meta"]["hostvars"]


def test_a_bad_node_entry_is_refused_naming_it(tmp_path):
    path = source(tmp_path, [("node1", "qemu:///system"), ("node 2", NODE2)])
    proc = inventory(path)
    assert proc.returncode != 0 and "nodes[1].name: 'node 2' is not a node name" in proc.stderr


def test_ansible_doc_renders_the_plugin():
    env = ansible_env()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "-t", "inventory",
                           "hpcvirt.regime.guests"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hpcvirt.regime.guests" in proc.stdout and "unreachable" in proc.stdout and "cache_timeout" in proc.stdout
