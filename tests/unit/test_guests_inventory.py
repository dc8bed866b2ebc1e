"""Pure parts of the inventory plugin hpcvirt.regime.guests: node list checks, URIs, consoles,
regimes, and the hosts, groups and variables it makes (into a real InventoryData)."""

import pytest

from ansible.inventory.data import InventoryData
from ansible.template import Templar, trust_as_template

from ansible_collections.hpcvirt.regime.plugins.inventory import guests as plugin


def guest(name, state="running", active=True, observed="shared", intent=None, partition=None, meta=None,
          consoles=None, leases=None, managed_save=False):
    return {
        "name": name, "uuid": "u-" + name, "state": state, "active": active, "managed_save": managed_save,
        "vcpus": {"current": 2, "maximum": 2}, "max_memory_kb": 262144,
        "placement": {"observed": observed, "partition": partition, "intent": intent, "intent_partition": partition},
        "hpcvirt": meta or {}, "consoles": consoles or [], "leases": leases or [],
    }


def node(name, guests, regime="time_shared", source="recorded", layout_known=True):
    return {"name": name, "uri": "qemu+ssh://%s/system" % name, "regime": regime, "regime_source": source,
            "layout_known": layout_known, "guests": guests}


@pytest.mark.parametrize("nodes,message", [
    ([], "nodes: give a list"),
    (None, "nodes: give a list"),
    (["cn1"], r"nodes\[0\]: must be a mapping"),
    ([{"name": "cn1"}], r"nodes\[0\].uri: None is not a libvirt URI"),
    ([{"name": "cn 1", "uri": "qemu:///system"}], r"nodes\[0\].name: 'cn 1' is not a node name"),
    ([{"name": "-cn", "uri": "qemu:///system"}], r"nodes\[0\].name"),
    ([{"name": "cn1", "uri": "qemu:///system; rm"}], r"nodes\[0\].uri"),
    ([{"name": "cn1", "uri": "/system"}], r"nodes\[0\].uri"),
    ([{"name": "cn1", "uri": "qemu:///system", "regime": "hpc"}], r"nodes\[0\].regime: 'hpc' is not one of"),
    ([{"name": "cn1", "uri": "qemu:///system", "url": "x"}], r"nodes\[0\]: unknown keys url"),
    ([{"name": "cn1", "uri": "qemu:///system"}, {"name": "cn1", "uri": "qemu+ssh://cn1/system"}],
     r"nodes\[1\].name: cn1 is named twice"),
])
def test_check_nodes_refuses_bad_entries_naming_them(nodes, message):
    with pytest.raises(ValueError, match=message):
        plugin.check_nodes(nodes)


def test_check_nodes_accepts_and_normalises():
    assert plugin.check_nodes([{"name": "cn-a01.x", "uri": "qemu+ssh://root@cn-a01/system", "regime": "mixed"},
                               {"name": "n2", "uri": "qemu+unix:///system?socket=/x/libvirt-sock"}]) == [
        {"name": "cn-a01.x", "uri": "qemu+ssh://root@cn-a01/system", "regime": "mixed"},
        {"name": "n2", "uri": "qemu+unix:///system?socket=/x/libvirt-sock", "regime": None}]


@pytest.mark.parametrize("uri,local", [
    ("qemu:///system", True),
    ("qemu:///session", True),
    ("qemu+ssh://cn1/system", False),
    ("qemu://cn1/system", False),
    ("qemu+unix:///system?socket=/var/lib/hpcvirt/nodes/hpcvirt-node2/run/libvirt-sock", False),
    ("qemu:///system?socket=/elsewhere/libvirt-sock", False),
])
def test_local_uri(uri, local):
    assert plugin.is_local_uri(uri) is local


def test_console_paths_serials_first_no_duplicates_no_entities():
    xml = """<domain type='qemu'><name>g</name><devices>
      <console type='file'><source path='/var/log/g-console.log'/></console>
      <serial type='pty'><source path='/dev/pts/3'/></serial>
      <serial type='file'><source path='/var/lib/hpcvirt/testbed/console/g.log' append='on'/></serial>
      <console type='file'><source path='/var/lib/hpcvirt/testbed/console/g.log'/></console>
    </devices></domain>"""
    assert plugin.console_paths(xml) == ["/var/lib/hpcvirt/testbed/console/g.log", "/var/log/g-console.log"]
    evil = """<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
      <domain><devices><serial type='file'><source path='&x;'/></serial></devices></domain>"""
    assert plugin.console_paths(evil) == []


@pytest.mark.parametrize("intents,regime", [
    ([], "unknown"),
    ([None], "unknown"),
    (["dedicated"], "space_shared"),
    (["shared", None], "time_shared"),
    (["dedicated", "shared"], "mixed"),
])
def test_regime_from_guests(intents, regime):
    assert plugin.regime_from_guests([guest("g%d" % i, intent=v) for i, v in enumerate(intents)]) == regime


def test_node_regime_prefers_given_then_the_node_then_its_guests():
    assert plugin.node_regime({"regime": "mixed"}, {"name": "time_shared", "source": "recorded"}, []) == ("mixed", "given")
    assert plugin.node_regime({"regime": None}, {"name": "space_shared", "source": "inferred"}, []) == ("space_shared", "inferred")
    assert plugin.node_regime({"regime": None}, None, [guest("a", intent="dedicated")]) == ("space_shared", "guests")


def test_host_entries_groups_and_variables():
    meta = {"vse": {"name": "web-tier", "digest": "d"}, "placement": {"mode": "dedicated", "partition": "p1"},
            "addresses": {"net0": "192.0.2.10"}, "migration": {"home_host": "cn1"}}
    nodes = [
        node("cn1", [guest("a", observed="dedicated", intent="dedicated", partition="p1", meta=meta,
                           consoles=["/c/a.log"], leases=[("vnet0", "192.0.2.99")])]),
        node("cn2", [guest("b", observed="custom", intent=None, state="shutoff", active=False,
                           meta={"checkpoint": {"state": "preempted"}}, managed_save=True)],
             regime="unknown", source="guests", layout_known=False),
    ]
    entries, duplicates = plugin.host_entries(nodes)
    assert duplicates == []
    (a_name, a_groups, a_vars), (b_name, b_groups, b_vars) = entries
    assert a_name == "a"
    assert a_groups == ["hpcvirt_node_cn1", "hpcvirt_regime_time_shared", "hpcvirt_placement_dedicated",
                        "hpcvirt_state_running", "hpcvirt_vse_web_tier"]
    assert a_vars["hpcvirt_addresses"] == {"net0": "192.0.2.10", "vnet0": "192.0.2.99"}
    assert a_vars["ansible_host"] == "192.0.2.10"
    assert a_vars["hpcvirt_console"] == "/c/a.log"
    assert a_vars["hpcvirt_partition"] == "p1" and a_vars["hpcvirt_home"] == "cn1"
    assert a_vars["hpcvirt_memory_mib"] == 256 and a_vars["hpcvirt_vcpus"] == 2
    assert a_vars["hpcvirt_node_uri"] == "qemu+ssh://cn1/system"
    # A node whose layout cannot be read: no observed placement, the recorded intent or unknown.
    assert b_groups == ["hpcvirt_node_cn2", "hpcvirt_regime_unknown", "hpcvirt_placement_unknown", "hpcvirt_state_shutoff"]
    assert b_vars["hpcvirt_placement_observed"] is None and b_vars["hpcvirt_preempted"] is True
    assert "ansible_host" not in b_vars and b_vars["hpcvirt_console"] is None
    assert b_vars["hpcvirt_node_regime_source"] == "guests"


def test_a_guest_on_two_nodes_is_listed_where_it_runs():
    nodes = [node("cn1", [guest("m", state="shutoff", active=False)]), node("cn2", [guest("m")])]
    entries, duplicates = plugin.host_entries(nodes, prefix="hv_")
    assert [(e[0], e[2]["hpcvirt_node"]) for e in entries] == [("m", "cn2")]
    assert duplicates == [("m", "cn1")]
    assert entries[0][1][0] == "hv_node_cn2"


class Options:
    """What the plugin reads with get_option, for _populate without a config file."""

    def __init__(self, **values):
        self.values = dict({"strict": True, "compose": {}, "groups": {}, "keyed_groups": [],
                            "group_prefix": "hpcvirt_", "leak": None}, **values)


def test_populate_fills_a_real_inventory_with_constructed_groups():
    inventory_plugin = plugin.InventoryModule()
    inventory_plugin.inventory = InventoryData()
    # Expressions from an inventory source file are trusted templates (as _read_config_data makes them).
    options = Options(keyed_groups=[{"key": trust_as_template("hpcvirt_partition"), "prefix": "partition"}],
                      groups={"big": trust_as_template("hpcvirt_vcpus >= 2")},
                      compose={"hpcvirt_label": trust_as_template("hpcvirt_node ~ '/' ~ hpcvirt_uuid")})
    inventory_plugin.get_option = lambda name: options.values[name]
    inventory_plugin.templar = Templar(loader=None)
    inventory_plugin._populate([node("cn1", [guest("a", partition="p1", observed="dedicated")])])
    data = inventory_plugin.inventory
    assert "a" in data.hosts
    groups = {g.name for g in data.hosts["a"].get_groups()}
    assert {"hpcvirt_node_cn1", "hpcvirt_regime_time_shared", "hpcvirt_placement_dedicated", "hpcvirt_state_running",
            "partition_p1", "big"} <= groups
    assert data.hosts["a"].vars["hpcvirt_node"] == "cn1"
    assert data.hosts["a"].vars["hpcvirt_label"] == "cn1/u-a"
