# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a node looks like now: its CPU layout as found, its guests' placement, its regime.

The pure functions (``observe_layout``, ``classify_placement``, ``infer_regime``,
``parse_domain_xml``) take plain data and are unit-tested; ``read_guest`` asks a libvirt domain.
"""

from __future__ import annotations

import os
from xml.etree import ElementTree

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    cpumap_to_set,
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import CgroupError, detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import (
    metadata_from_domain_xml,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    LAYOUT_FILE,
    REGIME_FILE,
    read_json,
    to_int as _int,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology


class NodeStateError(HpcvirtError):
    """The node's own files cannot be read as expected; the message says which and why."""


class NodeState:
    """Everything a planner needs to know about a node, read once per module run.

    ``topology`` (CPUs, cores, NUMA nodes, hugepage pools, kernel command line), ``cgroups`` (cgroup
    mode, cpuset hierarchy, libvirt's machine cgroup, partition cgroups), ``record`` (the layout
    file as written, honouring the module's ``layout_file``), ``layout`` (housekeeping, pool and
    partitions as found), ``regime``, and, with a libvirt connection, ``guests`` (every domain with
    live and persistent pins, placement and hpcvirt intent) and ``domains`` (name -> domain).
    IRQ affinities and per-NUMA-node hugepages are read on first use. Nothing here writes.
    """

    def __init__(self, topology, cgroups, record, layout, regime, guests=None, domains=None, conn=None,
                 ncpus=None, root="/", layout_file=LAYOUT_FILE, timings=None):
        self.topology = topology
        self.cgroups = cgroups
        self.record = record
        self.layout = layout
        self.regime = regime
        self.guests = guests if guests is not None else []
        self.domains = domains if domains is not None else {}
        self.conn = conn
        self.ncpus = ncpus
        self.root = root
        self.layout_file = layout_file
        self.timings = timings if timings is not None else Timings()
        self.regime_record = None
        self._irqs = None
        self._hugepages = None

    # -- reading ---------------------------------------------------------------------------------

    @classmethod
    def read(cls, conn=None, root="/", layout_file=None, machine_cgroup=None, libvirt=None, guests=True,
             require_cpuset=False, timings=None):
        """Read the node. ``conn`` (an open libvirt connection) adds its guests unless ``guests`` is False."""
        timings = timings if timings is not None else Timings()
        layout_file = layout_file or "/" + LAYOUT_FILE
        with timings.measure("read"):
            try:
                topology = read_topology(root)
            except (OSError, ValueError) as exc:
                raise NodeStateError("node topology (/sys/devices/system): %s" % exc)
            try:
                cgroups = detect_layout(root, machine_name=machine_cgroup)
            except CgroupError as exc:
                raise NodeStateError("cgroup: %s" % exc)
            if require_cpuset and cgroups.cpuset_version is None:
                raise NodeStateError("cgroup: the cpuset controller is not mounted on this node (neither v1 nor "
                                     "enabled in the v2 root's cgroup.controllers)")
            try:
                record = read_json(root, layout_file.lstrip("/"))
            except ValueError as exc:
                raise NodeStateError("layout_file: %s" % exc)
            if record is not None and not isinstance(record, dict):
                raise NodeStateError("layout_file: %s does not hold a layout (a JSON object)" % layout_file)
            try:
                recorded = read_json(root, REGIME_FILE)
            except ValueError as exc:
                raise NodeStateError("regime record: %s; remove it or move the node to a regime again" % exc)
            layout = observe_layout(topology, cgroups, record)
            if isinstance(recorded, dict) and recorded.get("regime"):
                regime = {"name": recorded["regime"], "source": "recorded", "recorded_at": recorded.get("changed_at")}
            else:
                regime = {"name": infer_regime(layout), "source": "inferred", "recorded_at": None}
            node = cls(topology, cgroups, record, layout, regime, conn=conn, root=root, layout_file=layout_file,
                       timings=timings)
            node.regime_record = recorded if isinstance(recorded, dict) else None
            if conn is not None:
                node.ncpus = conn.getCPUMap()[0]
                if guests:
                    node.read_guests(libvirt)
        return node

    def read_guests(self, libvirt):
        """Every domain of the connection, as ``read_guest`` reports it."""
        domains = self.conn.listAllDomains(0)
        self.guests = read_guests(libvirt, domains, self.partitions, self.pool, DOMAIN_STATES)
        names = {guest["name"] for guest in self.guests}
        self.domains = {dom.name(): dom for dom in domains if dom.name() in names}
        for guest in self.guests:
            guest.setdefault("hpcvirt", {})
        return self.guests

    # -- views -----------------------------------------------------------------------------------

    @property
    def online(self):
        return self.topology.online

    @property
    def partitions(self):
        return {p["name"]: p for p in self.layout["partitions"]}

    @property
    def pool(self):
        return parse_cpulist(self.layout["pool"])

    @property
    def housekeeping(self):
        return parse_cpulist(self.layout["housekeeping"])

    def guest(self, name):
        for guest in self.guests:
            if guest["name"] == name:
                return guest
        return None

    def running_pins(self):
        """Running guest -> its vCPU pin sets (what a partition must not take from under it)."""
        return {g["name"]: [parse_cpulist(g["vcpu_pins"][str(i)]) for i in range(len(g["vcpu_pins"]))]
                for g in self.guests if g.get("active")}

    def irqs(self):
        """IRQ -> CPUs it may be delivered to (read once)."""
        if self._irqs is None:
            from ansible_collections.hpcvirt.regime.plugins.module_utils import _irq
            self._irqs = _irq.read_affinities(os.path.join(self.root, "proc/irq"))
        return self._irqs

    def hugepages(self):
        """NUMA node -> {page size kB: pages} (read once)."""
        if self._hugepages is None:
            from ansible_collections.hpcvirt.regime.plugins.module_utils import _hugepages
            self._hugepages = _hugepages.read_node_pools(self.topology)
        return self._hugepages

    def summary(self):
        """The plain-data form node_info returns (without guests)."""
        return {"topology": self.topology.to_dict(), "cgroups": self.cgroups.to_dict(), "layout": self.layout,
                "regime": self.regime}


def node_report(node, lv, domains=None, include_cpus=True):
    """What node_info returns: the hypervisor, topology, cgroups, layout, guests and regime."""
    conn = node.conn
    with node.timings.measure("hypervisor"):
        hypervisor = {
            "uri": conn.getURI(),
            "hypervisor": conn.getType(),
            "hypervisor_version": lv.version_string(conn.getVersion()),
            "library_version": lv.version_string(conn.getLibVersion()),
        }
        hostname = conn.getHostname()
    by_name = {guest["name"]: guest for guest in node.guests}
    names = sorted(by_name) if domains is None else [n for n in domains if n in by_name]
    topology = node.topology.to_dict()
    if not include_cpus:
        topology.pop("cpus")
    return dict(hostname=hostname, libvirt=hypervisor, topology=topology, cgroup=node.cgroups.to_dict(),
                layout=node.layout, domains=[by_name[n] for n in names],
                missing_domains=[n for n in (domains or []) if n not in by_name], regime=node.regime,
                timings=node.timings.to_dict())


def read_node(module, libvirt=None, guests=True, require_cpuset=False, timings=None, root="/"):
    """``NodeState.read`` with the module's ``uri``, ``layout_file`` and ``machine_cgroup`` options."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils import _libvirt as lv

    params = module.params
    conn = lv.open_connection(module) if "uri" in params else None
    return NodeState.read(conn=conn, root=root, layout_file=params.get("layout_file"),
                          machine_cgroup=params.get("machine_cgroup"), libvirt=libvirt or lv.libvirt,
                          guests=guests, require_cpuset=require_cpuset, timings=timings)


def observe_layout(topology, cgroups, layout_file=None):
    """Housekeeping CPUs, partitions and shared pool as the node has them.

    Partitions are the partition cgroups below libvirt's machine cgroup. Housekeeping and pool come
    from the layout file the partition module writes; without one, a node that was never carved
    has every online CPU in both (the host and the guests share everything).
    """
    online = topology.online
    partitions = {}
    for name, cgroup in sorted(cgroups.partitions().items()):
        partitions[name] = {
            "name": name,
            "cpus": format_cpulist(cgroup.cpus),
            "mems": format_cpulist(cgroup.mems),
            "partition_state": cgroup.partition_state,
            "exclusive": cgroup.exclusive,
            "cgroup": cgroup.path,
        }
    in_partitions = frozenset()
    for part in partitions.values():
        in_partitions |= parse_cpulist(part["cpus"])

    if layout_file:
        housekeeping = parse_cpulist(layout_file.get("housekeeping", "")) & online
        pool = parse_cpulist(layout_file.get("pool", "")) & online
        source = "layout_file"
    else:
        housekeeping = online - in_partitions
        pool = online - in_partitions
        source = "cgroups" if partitions else "default"
    return {
        "housekeeping": format_cpulist(housekeeping),
        "pool": format_cpulist(pool),
        "partitions": [partitions[name] for name in sorted(partitions)],
        "unassigned": format_cpulist(online - housekeeping - pool - in_partitions),
        "source": source,
    }


def infer_regime(layout):
    """The regime a layout amounts to: no partitions is time-shared, no pool is space-shared."""
    has_partitions = bool(layout["partitions"])
    pool = parse_cpulist(layout["pool"]) - parse_cpulist(layout["housekeeping"])
    if not has_partitions:
        return "time_shared"
    if not pool:
        return "space_shared"
    return "mixed"


def classify_placement(vcpu_pins, partitions, pool):
    """How a guest's vCPUs sit on the node.

    ``dedicated``: every vCPU pinned to its own single CPU, all inside one partition.
    ``shared``: every vCPU may float over CPUs of the shared pool (and none of a partition).
    ``custom``: anything else (hand-made pins, pins across partitions, pins into a partition that
    are not 1:1).
    Returns (mode, partition name or None).
    """
    pins = [frozenset(p) for p in vcpu_pins]
    if not pins:
        return "custom", None
    part_cpus = {name: parse_cpulist(p["cpus"]) for name, p in partitions.items()}
    single = all(len(p) == 1 for p in pins)
    used = frozenset().union(*pins)
    if single and len(used) == len(pins):
        for name, cpus in part_cpus.items():
            if used <= cpus:
                return "dedicated", name
    in_any_partition = frozenset().union(*part_cpus.values()) if part_cpus else frozenset()
    if used <= pool and not used & in_any_partition:
        return "shared", None
    return "custom", None


def parse_domain_xml(xml_text):
    """What the domain XML says about vCPUs, tuning, memory and hpcvirt intent (no libvirt needed)."""
    root = ElementTree.fromstring(xml_text)
    vcpu = root.find("vcpu")
    maximum = _int(vcpu.text, 1) if vcpu is not None else 1
    current = _int(vcpu.get("current"), maximum) if vcpu is not None else maximum

    backing = root.find("memoryBacking")
    hugepages = []
    locked = False
    if backing is not None:
        pages = backing.find("hugepages")
        if pages is not None:
            sizes = [
                {"size": page.get("size"), "unit": page.get("unit", "KiB"), "nodeset": page.get("nodeset")}
                for page in pages.findall("page")
            ]
            hugepages = sizes or [{"size": None, "unit": None, "nodeset": None}]
        locked = backing.find("locked") is not None

    numatune = {}
    memory = root.find("numatune/memory")
    if memory is not None:
        numatune = {"mode": memory.get("mode", "strict"), "nodeset": memory.get("nodeset"),
                    "placement": memory.get("placement")}

    cputune = root.find("cputune")
    shares = quota = None
    vcpupins = {}
    if cputune is not None:
        shares = _int(cputune.findtext("shares"))
        quota = _int(cputune.findtext("quota"))
        for pin in cputune.findall("vcpupin"):
            vcpupins[_int(pin.get("vcpu"))] = pin.get("cpuset")

    return {
        "type": root.get("type"),
        "vcpus": {"current": current, "maximum": maximum},
        "memory_backing": {"hugepages": hugepages, "locked": locked},
        "numatune": numatune,
        "cputune": {"shares": shares, "quota": quota},
        "vcpupins": vcpupins,
        "vcpu_cpuset": vcpu.get("cpuset") if vcpu is not None else None,
        "resource_partition": root.findtext("resource/partition"),
        "metadata": metadata_from_domain_xml(xml_text),
    }


DOMAIN_STATES = {
    0: "nostate", 1: "running", 2: "blocked", 3: "paused",
    4: "shutdown", 5: "shutoff", 6: "crashed", 7: "pmsuspended",
}


def domain_state(dom):
    """A domain's state by name (``running``, ``shutoff``, ...)."""
    return DOMAIN_STATES.get(dom.state()[0], "unknown")


def read_guest(libvirt, dom, partitions, pool, states=DOMAIN_STATES):
    """One domain's state and placement, live when it runs and from its config when it does not."""
    state, reason = dom.state()
    active = bool(dom.isActive())
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if active else libvirt.VIR_DOMAIN_AFFECT_CONFIG
    xml_flags = 0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE
    described = parse_domain_xml(dom.XMLDesc(xml_flags))

    vcpu_pins = [cpumap_to_set(m) for m in dom.vcpuPinInfo(flags)]
    # vcpuPinInfo covers online vCPUs only; the others' pins are in the XML (or default to the
    # <vcpu cpuset>, or every host CPU).
    host_cpus = frozenset(range(len(dom.emulatorPinInfo(flags))))
    default = parse_cpulist(described["vcpu_cpuset"]) if described["vcpu_cpuset"] else host_cpus
    for vcpu in range(len(vcpu_pins), described["vcpus"]["maximum"]):
        text = described["vcpupins"].get(vcpu)
        vcpu_pins.append(parse_cpulist(text) if text else default)
    emulator = cpumap_to_set(dom.emulatorPinInfo(flags))
    try:
        iothreads = {str(info[0]): format_cpulist(cpumap_to_set(info[1])) for info in dom.ioThreadInfo(flags)}
    except libvirt.libvirtError:
        iothreads = {}
    try:
        scheduler = dom.schedulerParametersFlags(flags)
    except libvirt.libvirtError:
        scheduler = {}
    running_on = {}
    if active:
        try:
            running_on = {str(v[0]): v[3] for v in dom.vcpus()[0]}
        except libvirt.libvirtError:
            running_on = {}

    info = dom.info()
    mode, partition = classify_placement(vcpu_pins[: described["vcpus"]["maximum"]], partitions, pool)
    intent = described["metadata"].get("placement", {})
    return {
        "name": dom.name(),
        "uuid": dom.UUIDString(),
        "id": dom.ID() if active else None,
        "state": states.get(state, "unknown"),
        "state_reason": reason,
        "active": active,
        "persistent": bool(dom.isPersistent()),
        "autostart": bool(dom.autostart()) if dom.isPersistent() else False,
        "managed_save": bool(dom.hasManagedSaveImage(0)),
        "domain_type": described["type"],
        "vcpus": described["vcpus"],
        "memory_kb": info[2],
        "max_memory_kb": info[1],
        "vcpu_pins": {str(i): format_cpulist(p) for i, p in enumerate(vcpu_pins)},
        "vcpu_running_on": running_on,
        "emulator_pin": format_cpulist(emulator),
        "iothread_pins": iothreads,
        "scheduler": scheduler,
        "memory_backing": described["memory_backing"],
        "numatune": described["numatune"],
        "resource_partition": described["resource_partition"],
        "hpcvirt": described["metadata"],
        "placement": {
            "observed": mode,
            "partition": partition,
            "intent": intent.get("mode"),
            "intent_partition": intent.get("partition"),
        },
    }


def read_guests(libvirt, domains, partitions, pool, states=DOMAIN_STATES):
    """``read_guest`` for each domain, leaving out those undefined while being read."""
    guests = []
    for dom in domains:
        try:
            guests.append(read_guest(libvirt, dom, partitions, pool, states))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return guests
