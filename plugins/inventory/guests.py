# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: guests
short_description: Guests of hpcvirt nodes, read from each node's libvirt, as inventory hosts
version_added: 0.1.0
author:
  - hpcvirt.regime developers (@hpcvirt)
description:
  - Connects read-only to the libvirt of every node in O(nodes) and makes each guest (domain) an
    inventory host, read the way M(hpcvirt.regime.node_info) reads it (the collection's
    C(_node.read_guest)).
  - "Groups: C(<prefix>node_<node>), C(<prefix>regime_<regime of its node>),
    C(<prefix>placement_<placement>) (dedicated, shared, custom or unknown),
    C(<prefix>vse_<VSE name>) and C(<prefix>state_<domain state>); O(keyed_groups), O(groups) and
    O(compose) add more."
  - "Host variables: C(hpcvirt_node), C(hpcvirt_node_uri), C(hpcvirt_node_regime),
    C(hpcvirt_node_regime_source), C(hpcvirt_state), C(hpcvirt_uuid), C(hpcvirt_vcpus),
    C(hpcvirt_memory_mib), C(hpcvirt_placement), C(hpcvirt_placement_observed),
    C(hpcvirt_placement_intent), C(hpcvirt_partition), C(hpcvirt_vse), C(hpcvirt_addresses)
    (network to address, from the guest's hpcvirt metadata and, for running guests, libvirt's
    DHCP leases), C(hpcvirt_console) (the heartbeat console file, a file-backed serial or
    console), C(hpcvirt_home) (the node a migrated guest came from), C(hpcvirt_preempted), and
    C(ansible_host) (the first address) when the guest has one."
  - A node's regime and its partitions and pool can only be read on the node itself. For a node
    reached without a host and without a socket in its URI (this machine), they come from its
    files as for node_info. Elsewhere the regime is the node's O(nodes[].regime) when given, else
    inferred from its guests' recorded placements (dedicated only is C(space_shared), shared only
    C(time_shared), both C(mixed), none C(unknown)); a guest's placement is then its recorded
    intent, or C(unknown).
  - A node whose libvirt cannot be reached fails the inventory with one message naming the node and
    its URI (O(unreachable=fail)), or is left out with a warning naming it (O(unreachable=warn)).
  - Usable as an AWX inventory source (sourced from a project file of this form), with caching
    (O(cache)) so that AWX's frequent updates do not read every node each time.
  - The inventory source file name must end in C(guests.yml) or C(guests.yaml).
requirements:
  - libvirt-python on the controller (or in the execution environment)
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin.
    required: true
    type: str
    choices: [hpcvirt.regime.guests]
  nodes:
    description: The nodes to read.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The node's inventory name (letters, digits, C(_), C(.), C(-); at most 63).
        type: str
        required: true
      uri:
        description: libvirt URI of the node, for example C(qemu+ssh://root@cn-a01/system).
        type: str
        required: true
      regime:
        description: The node's regime when it cannot be read from the node (remote nodes).
        type: str
        choices: [space_shared, time_shared, mixed]
  group_prefix:
    description: Prefix of the groups this plugin makes.
    type: str
    default: hpcvirt_
  include_inactive:
    description: Also list guests that are defined but not running (shut off, preempted).
    type: bool
    default: true
  leases:
    description: Ask libvirt for the DHCP leases of running guests' interfaces as addresses.
    type: bool
    default: true
  unreachable:
    description: C(fail) the whole inventory when a node's libvirt cannot be reached, or C(warn) and leave it out.
    type: str
    choices: [fail, warn]
    default: fail
"""

EXAMPLES = r"""
# hpcvirt.guests.yml (AWX: an inventory source of type "Sourced from a Project" pointing at it)
plugin: hpcvirt.regime.guests
nodes:
  - name: cn-a01
    uri: qemu+ssh://root@cn-a01.cluster.example/system
  - name: cn-a02
    uri: qemu+ssh://root@cn-a02.cluster.example/system
    regime: space_shared
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: /var/cache/hpcvirt-guests
cache_timeout: 300
keyed_groups:
  - key: hpcvirt_partition
    prefix: partition
"""

import re
from urllib.parse import parse_qs, urlsplit

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable

try:
    import libvirt
except ImportError:
    libvirt = None

try:
    from lxml import etree
except ImportError:
    etree = None

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
URI = re.compile(r"[a-z][a-z0-9+]*://[^\s]{0,1000}")
REGIMES = ("space_shared", "time_shared", "mixed")
PLACEMENTS = ("dedicated", "shared", "custom")


def check_nodes(nodes):
    """The node list, validated: each entry named, with a URI, names unique. Raises ValueError."""
    if not isinstance(nodes, list) or not nodes:
        raise ValueError("nodes: give a list of {name, uri}")
    seen = set()
    checked = []
    for index, node in enumerate(nodes):
        where = "nodes[%d]" % index
        if not isinstance(node, dict):
            raise ValueError("%s: must be a mapping with name and uri" % where)
        unknown = sorted(set(node) - {"name", "uri", "regime"})
        if unknown:
            raise ValueError("%s: unknown keys %s (name, uri, regime are known)" % (where, ", ".join(unknown)))
        name, uri, regime = node.get("name"), node.get("uri"), node.get("regime")
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
            raise ValueError("%s.name: %r is not a node name (letters, digits, _ . -, at most 63)" % (where, name))
        if name in seen:
            raise ValueError("%s.name: %s is named twice" % (where, name))
        if not isinstance(uri, str) or not URI.fullmatch(uri):
            raise ValueError("%s.uri: %r is not a libvirt URI (driver[+transport]://[host]/path)" % (where, uri))
        if regime is not None and regime not in REGIMES:
            raise ValueError("%s.regime: %r is not one of %s" % (where, regime, ", ".join(REGIMES)))
        seen.add(name)
        checked.append({"name": name, "uri": uri, "regime": regime})
    return checked


def is_local_uri(uri):
    """Whether the URI reaches this machine's own libvirtd (no host, no socket of another daemon)."""
    parts = urlsplit(uri)
    if parts.netloc or "+" in parts.scheme:
        return False
    return "socket" not in parse_qs(parts.query)


def console_paths(xml_text):
    """Paths of the file-backed serial ports and consoles in a domain's XML, serials first."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml_text.encode(), parser)
    except etree.XMLSyntaxError:
        return []
    paths = []
    for device in root.findall("devices/serial[@type='file']") + root.findall("devices/console[@type='file']"):
        for source in device.findall("source"):
            path = source.get("path")
            if path and path not in paths:
                paths.append(path)
    return paths


def regime_from_guests(guests):
    """A remote node's regime from its guests' recorded placements, and that it was inferred so."""
    intents = {g["placement"].get("intent") for g in guests} & set(PLACEMENTS)
    if "dedicated" in intents and "shared" in intents:
        return "mixed"
    if "dedicated" in intents:
        return "space_shared"
    if "shared" in intents:
        return "time_shared"
    return "unknown"


def node_regime(node, local_regime, guests):
    """(regime, source) for a node: given, read on the node, or inferred from its guests."""
    if node.get("regime"):
        return node["regime"], "given"
    if local_regime is not None:
        return local_regime["name"], local_regime["source"]
    return regime_from_guests(guests), "guests"


def placement_of(guest, layout_known):
    placement = guest.get("placement") or {}
    observed = placement.get("observed") if layout_known else None
    return placement.get("intent") or observed or "unknown", observed


def safe_group(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", str(name))


def host_entries(nodes, prefix="hpcvirt_"):
    """What the inventory gets, from what was read: a list of (host, groups, hostvars).

    ``nodes``: per node, {name, uri, regime, regime_source, layout_known, guests}, each guest as
    read_guest returns it plus ``consoles`` and ``leases``. A guest on two nodes (a migration in
    flight) is listed once, where it runs; the others are returned as duplicates.
    """
    chosen = {}
    duplicates = []
    for node in nodes:
        for guest in node["guests"]:
            name = guest["name"]
            if name in chosen:
                other_node, other = chosen[name]
                if guest.get("active") and not other.get("active"):
                    duplicates.append((name, other_node["name"]))
                    chosen[name] = (node, guest)
                else:
                    duplicates.append((name, node["name"]))
                continue
            chosen[name] = (node, guest)

    entries = []
    for name in sorted(chosen):
        node, guest = chosen[name]
        meta = guest.get("hpcvirt") or {}
        placement, observed = placement_of(guest, node["layout_known"])
        addresses = {}
        for net, address in sorted((meta.get("addresses") or {}).items()):
            addresses[str(net)] = str(address)
        for iface, address in guest.get("leases") or []:
            addresses.setdefault(iface, address)
        vse = (meta.get("vse") or {}).get("name")
        consoles = guest.get("consoles") or []
        hostvars = {
            "hpcvirt_node": node["name"],
            "hpcvirt_node_uri": node["uri"],
            "hpcvirt_node_regime": node["regime"],
            "hpcvirt_node_regime_source": node["regime_source"],
            "hpcvirt_state": guest["state"],
            "hpcvirt_uuid": guest["uuid"],
            "hpcvirt_vcpus": guest["vcpus"]["current"],
            "hpcvirt_memory_mib": guest["max_memory_kb"] // 1024,
            "hpcvirt_placement": placement,
            "hpcvirt_placement_observed": observed,
            "hpcvirt_placement_intent": guest["placement"].get("intent"),
            "hpcvirt_partition": guest["placement"].get("partition") or guest["placement"].get("intent_partition"),
            "hpcvirt_vse": vse,
            "hpcvirt_addresses": addresses,
            "hpcvirt_console": consoles[0] if consoles else None,
            "hpcvirt_home": (meta.get("migration") or {}).get("home_host"),
            "hpcvirt_preempted": (meta.get("checkpoint") or {}).get("state") == "preempted" and guest.get("managed_save", False),
        }
        if addresses:
            hostvars["ansible_host"] = next(iter(addresses.values()))
        groups = [
            prefix + "node_" + safe_group(node["name"]),
            prefix + "regime_" + safe_group(node["regime"]),
            prefix + "placement_" + safe_group(placement),
            prefix + "state_" + safe_group(guest["state"]),
        ]
        if vse:
            groups.append(prefix + "vse_" + safe_group(vse))
        entries.append((name, groups, hostvars))
    return entries, duplicates


def _leases(dom):
    if not dom.isActive():
        return []
    try:
        found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)
    except libvirt.libvirtError:
        return []
    leases = []
    for iface, info in sorted(found.items()):
        for addr in info.get("addrs") or []:
            if addr.get("addr"):
                leases.append((iface, addr["addr"]))
    return leases


class InventoryModule(BaseInventoryPlugin, Cacheable, Constructable):
    NAME = "hpcvirt.regime.guests"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("guests.yml", "guests.yaml"))

    def _read_node(self, node):
        """Everything the inventory needs from one node, as plain data (cacheable)."""
        # Imported here: module_utils of the collection, shared with node_info.
        from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist
        from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import DOMAIN_STATES, error_text
        from ansible_collections.hpcvirt.regime.plugins.module_utils._node import (
            NodeState,
            NodeStateError,
            read_guests,
        )

        local = is_local_uri(node["uri"])
        partitions, pool, local_regime = {}, frozenset(), None
        if local:
            try:
                local_node = NodeState.read()
                layout, local_regime = local_node.layout, local_node.regime
            except NodeStateError as exc:
                raise AnsibleParserError("hpcvirt.regime.guests: node %s: cannot read its layout: %s" % (node["name"], exc))
            partitions = {p["name"]: p for p in layout["partitions"]}
            pool = parse_cpulist(layout["pool"])
        try:
            conn = libvirt.openReadOnly(node["uri"])
        except libvirt.libvirtError as exc:
            return None, "node %s: cannot connect to libvirt at %s: %s" % (node["name"], node["uri"], error_text(exc))
        try:
            flags = 0 if self.get_option("include_inactive") else libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            domains = sorted(conn.listAllDomains(flags), key=lambda d: d.name())
            guests = read_guests(libvirt, domains, partitions, pool, DOMAIN_STATES)
            by_name = {d.name(): d for d in domains}
            for guest in guests:
                dom = by_name[guest["name"]]
                flags_xml = 0 if guest["active"] else libvirt.VIR_DOMAIN_XML_INACTIVE
                guest["consoles"] = console_paths(dom.XMLDesc(flags_xml))
                guest["leases"] = _leases(dom) if self.get_option("leases") else []
        except libvirt.libvirtError as exc:
            return None, "node %s: reading its guests at %s failed: %s" % (node["name"], node["uri"], error_text(exc))
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        regime, source = node_regime(node, local_regime, guests)
        return {"name": node["name"], "uri": node["uri"], "regime": regime, "regime_source": source,
                "layout_known": local, "guests": guests}, None

    def _read_nodes(self, nodes):
        if libvirt is None:
            raise AnsibleParserError("hpcvirt.regime.guests needs libvirt-python on the controller "
                                     "(pip install libvirt-python, or apt install python3-libvirt)")
        if etree is None:
            raise AnsibleParserError("hpcvirt.regime.guests needs lxml on the controller (pip install lxml)")
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        read = []
        for node in nodes:
            data, error = self._read_node(node)
            if error is None:
                read.append(data)
            elif self.get_option("unreachable") == "fail":
                raise AnsibleParserError("hpcvirt.regime.guests: %s" % error)
            else:
                self.display.warning("hpcvirt.regime.guests: %s; its guests are left out" % error)
        return read

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            nodes = check_nodes(self.get_option("nodes"))
        except ValueError as exc:
            raise AnsibleParserError("hpcvirt.regime.guests: %s" % exc)

        cache_key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        data = None
        if use_cache:
            try:
                data = self._cache[cache_key]
            except KeyError:
                update_cache = True
        if data is None:
            data = self._read_nodes(nodes)
        if update_cache:
            self._cache[cache_key] = data
        self._populate(data)

    def _populate(self, data):
        strict = self.get_option("strict")
        entries, duplicates = host_entries(data, self.get_option("group_prefix"))
        for name, node in duplicates:
            self.display.warning("hpcvirt.regime.guests: %s is also defined on %s; listed where it runs" % (name, node))
        for name, groups, hostvars in entries:
            for group in groups:
                self.inventory.add_group(group)
            self.inventory.add_host(name, group=groups[0])
            for group in groups[1:]:
                self.inventory.add_child(group, name)
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, value)
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)
