# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleets: many guests of one VSE, created all together or not at all.

A fleet is a name and a list of member names (a pattern such as ``job42-[001:200]``, or a count).
Every member is an ordinary VSE guest (``_vse.resolve`` and ``_domain.build_domain_xml`` build it,
``_storage`` makes its overlay) whose metadata also carries ``<hpcvirt:fleet name=.../>``, which is
how a later run finds the fleet's members.

A run is transactional:

1. **validate** everything before touching anything: names free, addresses free, master images
   present, room for the overlays in each pool directory, memory for the members to start;
2. write a **journal** (``/var/lib/hpcvirt/journal/fleet-<name>.json``) listing everything the run
   is about to create, then create overlays and define domains in batches, updating the journal
   after each batch, then start members with a bounded number of concurrent starts;
3. on any failure **roll back** exactly what the journal lists (domains this run defined or
   redefined, members it started, overlays and pools it created), nothing else. Validation
   guaranteed that none of those existed before, so deleting them never touches older state.

A run that is killed leaves its journal. The next run of the same fleet either completes it (the
request still validates: what the journal lists is adopted as the fleet's own) or rolls it back.
Fleet runs on a node are serialised by a lock on the journal directory.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import itertools
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage
from ansible_collections.hpcvirt.regime.plugins.module_utils._address import AddressError, range_addresses
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist
from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import build_domain_xml, compare, owned_view
from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import (
    JOURNAL_DIR,
    LAYOUT_FILE,
    read_json,
    remove_state,
    state_path,
    write_json_atomic,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology
from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import (
    VseError,
    check_domain_name,
    check_layer_keys,
    merge_dicts,
    resolve,
    validate,
)

MAX_MEMBERS = 5000
# Room a new overlay needs in its pool directory: a qcow2 overlay of a qcow2 master starts at
# 196,616 bytes (header, L1 table, refcount block); the rest is margin for the first writes.
OVERLAY_BYTES = 256 * 1024
# Memory a started member costs beyond its own RAM (QEMU itself, its page tables, TCG buffers).
QEMU_OVERHEAD_MIB = 64
UNDEFINE_FLAGS_NAMES = ("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                        "VIR_DOMAIN_UNDEFINE_NVRAM")

_RANGE = re.compile(r"\[([^\[\]]*)\]")
FLEET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FleetError(ValueError):
    """A request that cannot be carried out; the message names the field or the member and why."""


# --------------------------------------------------------------------------------------------
# Names, hostnames, addresses (pure)


def _expand_range(text, term):
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise FleetError("pattern: '[%s]' in '%s' is not a range (use [start:end] or [start:end:step])" % (text, term))
    start, end = parts[0], parts[1]
    step = int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 1
    if len(parts) == 3 and (not parts[2].isdigit() or step < 1):
        raise FleetError("pattern: the step of '[%s]' in '%s' must be a positive number" % (text, term))
    if start.isdigit() and end.isdigit():
        first, last = int(start), int(end)
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        values = ["%0*d" % (width, value) for value in range(first, last + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        first, last = ord(start), ord(end)
        values = [chr(value) for value in range(first, last + 1, step)]
    else:
        raise FleetError("pattern: '[%s]' in '%s' must be numeric ([001:200]) or letters ([a:f])" % (text, term))
    if not values:
        raise FleetError("pattern: '[%s]' in '%s' runs backwards (start after end)" % (text, term))
    return values


def expand_pattern(pattern, field="pattern"):
    """Member names of ``job42-[001:200]`` (Ansible's inventory range syntax).

    Terms are separated by commas; a term may hold several ranges (their product). Names keep the
    pattern's order, which is the members' order (``count`` takes the first ones, shrinking removes
    the last). A name that comes out twice is an error.
    """
    if not pattern or not str(pattern).strip():
        raise FleetError("%s: an empty pattern yields no names" % field)
    names, seen = [], {}
    for term in str(pattern).split(","):
        term = term.strip()
        if not term:
            raise FleetError("%s: '%s' has an empty term between commas" % (field, pattern))
        pieces = _RANGE.split(term)
        if "[" in "".join(pieces[::2]) or "]" in "".join(pieces[::2]):
            raise FleetError("%s: unbalanced brackets in '%s'" % (field, term))
        choices = [[piece] if index % 2 == 0 else _expand_range(piece, term) for index, piece in enumerate(pieces)]
        total = 1
        for choice in choices:
            total *= len(choice)
        if len(names) + total > MAX_MEMBERS:
            raise FleetError("%s: '%s' yields more than %d names" % (field, pattern, MAX_MEMBERS))
        for combo in itertools.product(*choices):
            name = "".join(combo)
            if name in seen:
                raise FleetError("%s: '%s' yields the name '%s' twice (from '%s' and '%s'); every member needs "
                                 "its own name" % (field, pattern, name, seen[name], term))
            seen[name] = term
            names.append(name)
    return names


def member_names(fleet, pattern=None, count=None):
    """The desired member names: the pattern's first ``count`` names, or ``<fleet>-001`` ... ``<fleet>-<count>``."""
    if count is not None and count < 1:
        raise FleetError("count: %d members is not a fleet; give at least 1 (state=absent removes a fleet)" % count)
    if pattern:
        names = expand_pattern(pattern)
        if count is not None and count > len(names):
            raise FleetError("count: %d members asked for, but pattern '%s' yields only %d names"
                             % (count, pattern, len(names)))
        names = names[:count] if count is not None else names
    elif count is None:
        raise FleetError("count: give count or pattern (or both) to say which members the fleet has")
    else:
        if count > MAX_MEMBERS:
            raise FleetError("count: at most %d members" % MAX_MEMBERS)
        names = ["%s-%0*d" % (fleet, max(3, len(str(count))), index) for index in range(1, count + 1)]
    for name in names:
        try:
            check_domain_name(name)
        except VseError as exc:
            raise FleetError("pattern: %s" % exc)
    return names


def member_hostnames(pattern, count):
    if not pattern:
        return [None] * count
    hostnames = expand_pattern(pattern, field="hostnames")
    if len(hostnames) < count:
        raise FleetError("hostnames: '%s' yields %d hostnames, the fleet has %d members" % (pattern, len(hostnames), count))
    return hostnames[:count]


def member_addresses(ranges, count):
    """{network: [ip/prefix per member]} from {network: range}; member k gets the range's k-th address."""
    out = {}
    for network, range_text in sorted((ranges or {}).items()):
        try:
            ips, prefix = range_addresses(str(range_text), count)
        except AddressError as exc:
            raise FleetError("addresses.%s: %s" % (network, exc))
        out[network] = ["%s/%d" % (ip, prefix) if prefix else ip for ip in ips]
    return out


def member_specs(fleet, base, names, hostnames=None, ranges=None, overrides=None):
    """The validated spec of every member: base spec, the member's address and hostname, its override.

    ``base``: merged (not yet validated) spec of the fleet's VSE. Returns a list of specs in member
    order; raises FleetError naming the member (or field) whose spec is wrong.
    """
    count = len(names)
    hostnames = member_hostnames(hostnames, count)
    addresses = member_addresses(ranges, count)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise FleetError("overrides: '%s' is not a member of fleet '%s' (members: %s ... %s)"
                         % (unknown[0], fleet, names[0], names[-1]))
    network_names = [net.get("name") for net in base.get("networks") or []]
    for network in addresses:
        if network not in network_names:
            raise FleetError("addresses.%s: the VSE has no network called '%s' (networks: %s)"
                             % (network, network, ", ".join(str(n) for n in network_names) or "none"))
    if hostnames[0] is not None and not network_names:
        raise FleetError("hostnames: the VSE has no network to carry a hostname; add one to its networks")
    specs = []
    for index, name in enumerate(names):
        spec = copy.deepcopy(base)
        try:
            if name in overrides:
                check_layer_keys(overrides[name] or {}, "overrides.%s" % name)
                spec = merge_dicts(spec, overrides[name] or {})
            for net in spec.get("networks") or []:
                if net.get("name") in addresses:
                    net.pop("ip_range", None)
                    net["ip"] = addresses[net["name"]][index]
            if hostnames[index] is not None and spec.get("networks"):
                spec["networks"][0]["hostname"] = hostnames[index]
            specs.append(validate(spec, domain_name=name))
        except VseError as exc:
            raise FleetError("member %s: %s" % (name, exc))
    return specs


# --------------------------------------------------------------------------------------------
# What the node holds (one pass over libvirt's domains)


def fleet_of(view):
    return ((view.get("metadata") or {}).get("fleet") or {}).get("name")


def read_guests(conn, libvirt):
    """Every domain of the node once: {name: {"dom", "view" (persistent), "active", "live" (or None)}}."""
    guests = {}
    for dom in conn.listAllDomains(0):
        try:
            view = owned_view(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            active = bool(dom.isActive())
            live = owned_view(dom.XMLDesc(0)) if active else None
        except libvirt.libvirtError:
            continue   # a guest that went away (migrated, undefined) while we listed
        guests[dom.name()] = {"dom": dom, "view": view, "active": active, "live": live}
    return guests


def holdings(guest):
    """(CPUs pinned 1:1, addresses) a guest holds, from its persistent and live definitions."""
    cpus, ips = set(), set()
    for view in (guest["view"], guest["live"]):
        if view is None:
            continue
        for pinned in view["cputune"]["vcpupin"].values():
            pinned = parse_cpulist(pinned)
            if len(pinned) == 1:
                cpus |= pinned
        ips |= set((view["metadata"].get("addresses") or {}).values())
    return cpus, ips


def read_layout(root="/"):
    """Partitions, online CPUs, housekeeping and pool, as ``_vse.resolve`` wants them (CgroupError, ValueError)."""
    topology = read_topology(root)
    cgroups = detect_layout(root)
    layout_file = read_json(root, LAYOUT_FILE) or {}
    return {
        "partitions": {name: {"cpus": cg.cpus, "mems": cg.mems} for name, cg in cgroups.partitions().items()},
        "online": topology.online,
        "housekeeping": parse_cpulist(layout_file.get("housekeeping", "")) & topology.online or None,
        "pool": parse_cpulist(layout_file.get("pool", "")) & topology.online or None,
    }


def free_memory_mib(root="/"):
    """MemAvailable of the node in MiB (what the kernel can give without swapping)."""
    with open(os.path.join(root, "proc/meminfo")) as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def free_hugepages(size_kib, root="/"):
    path = os.path.join(root, "sys/kernel/mm/hugepages/hugepages-%dkB/free_hugepages" % size_kib)
    try:
        with open(path) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def free_space(directory):
    """(bytes, inodes) free for an unprivileged writer in ``directory`` or its nearest existing parent."""
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory.rstrip("/")) or "/"
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize, (stat.f_favail if stat.f_files else None)


def check_memory(to_start, root="/"):
    """Memory admission for the members about to start; FleetError naming the shortfall."""
    plain = [m for m in to_start if not m["resolved"].get("hugepages_kib")]
    need = sum(m["resolved"]["memory_kib"] // 1024 + QEMU_OVERHEAD_MIB for m in plain)
    have = free_memory_mib(root)
    if need > have:
        raise FleetError("start: starting %d members needs %d MiB (%d MiB each with QEMU's overhead), the node has "
                         "%d MiB available: short by %d MiB; start fewer members or free memory"
                         % (len(plain), need, need // max(len(plain), 1), have, need - have))
    by_size = {}
    for member in to_start:
        size = member["resolved"].get("hugepages_kib")
        if size:
            by_size[size] = by_size.get(size, 0) + member["resolved"]["memory_kib"] // size
    for size, pages in sorted(by_size.items()):
        free = free_hugepages(size, root)
        if pages > free:
            raise FleetError("start: the members to start need %d hugepages of %d KiB, %d are free: short by %d"
                             % (pages, size, free, pages - free))


def check_space(overlays):
    """Room for the new overlays in each pool directory; FleetError naming the directory and shortfall."""
    by_dir = {}
    for disk in overlays:
        by_dir.setdefault(disk["pool_dir"], []).append(disk)
    for directory, disks in sorted(by_dir.items()):
        free_bytes, free_inodes = free_space(directory)
        need = len(disks) * OVERLAY_BYTES
        if need > free_bytes:
            raise FleetError("disks: %d overlays need %d KiB in %s, %d KiB are free: short by %d KiB (first member "
                             "without room: %s)" % (len(disks), need // 1024, directory, free_bytes // 1024,
                                                    (need - free_bytes) // 1024,
                                                    disks[free_bytes // OVERLAY_BYTES]["member"]))
        if free_inodes is not None and len(disks) > free_inodes:
            raise FleetError("disks: %d overlays need as many inodes in %s, %d are free"
                             % (len(disks), directory, free_inodes))


# --------------------------------------------------------------------------------------------
# Journal and lock


def journal_relpath(fleet):
    return os.path.join(JOURNAL_DIR, "fleet-%s.json" % fleet)


class NodeLock:
    """Serialises fleet runs on a node: an flock on the journal directory (released if killed)."""

    def __init__(self, root="/", timeout=300):
        self.path = state_path(root, JOURNAL_DIR)
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        os.makedirs(self.path, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDONLY)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(self.fd)
                    raise FleetError("another fleet run holds %s for more than %d s" % (self.path, self.timeout))
                time.sleep(0.2)

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


LISTS = ("pools", "directories", "overlays", "domains", "started_members")


class Journal:
    """What a run is creating, on disk before anything is created and after every batch."""

    def __init__(self, fleet, root="/"):
        self.fleet = fleet
        self.root = root
        self.relpath = journal_relpath(fleet)
        self.path = state_path(root, self.relpath)
        self.data = {"fleet": fleet, "pid": os.getpid(), "started": time.time(), "phase": "planned",
                     "pools": [], "directories": [], "overlays": [], "domains": [], "redefined": {}, "started_members": [],
                     "progress": {}}

    @classmethod
    def load(cls, fleet, root="/"):
        """The journal an earlier (killed) run left, or None."""
        data = read_json(root, journal_relpath(fleet))
        if data is None:
            return None
        journal = cls(fleet, root)
        journal.data.update(data)
        return journal

    def inherit(self, older):
        """Take over what a killed run created, so a failure now rolls that back as well."""
        for key in LISTS:
            self.data[key] = sorted(set(self.data[key]) | set(older.data.get(key) or []))
        redefined = dict(older.data.get("redefined") or {})
        redefined.update({k: v for k, v in self.data["redefined"].items() if k not in redefined})
        self.data["redefined"] = redefined

    def record(self, **changes):
        for key, value in changes.items():
            if key in LISTS:
                self.data[key] = sorted(set(self.data[key]) | set(value))
            elif key == "redefined":
                for name, xml in value.items():
                    self.data["redefined"].setdefault(name, xml)
            else:
                self.data[key] = value
        self.save()

    def save(self):
        write_json_atomic(self.root, self.relpath, self.data, mode=0o600)

    def remove(self):
        remove_state(self.root, self.relpath)


# --------------------------------------------------------------------------------------------
# Building the members and the plan


def resolve_members(fleet, names, specs, layer_list, guests, layout):
    """Resolve every member against the node; FleetError naming the member when the node cannot take it.

    ``guests``: read_guests(). ``layout``: partitions/online/housekeeping/pool as _vse.resolve wants.
    Each member's pins and addresses are added to what is taken before the next one is resolved.
    """
    taken_cpus, taken_ips, holder = set(), set(), {}
    for name, guest in guests.items():
        if name in names and fleet_of(guest["view"]) == fleet:
            continue   # a member keeps what it holds (resolve gets its current view)
        cpus, ips = holdings(guest)
        taken_cpus |= cpus
        taken_ips |= ips
        for ip in ips:
            holder[ip] = name
    members = []
    for index, (name, spec) in enumerate(zip(names, specs)):
        guest = guests.get(name)
        if guest is not None and fleet_of(guest["view"]) != fleet:
            owner = fleet_of(guest["view"])
            raise FleetError("member %s: a domain of that name already exists and %s; choose other names"
                             % (name, "belongs to fleet '%s'" % owner if owner else "is not a member of fleet '%s'" % fleet))
        for network, address in _explicit_addresses(spec).items():
            if address in taken_ips:
                raise FleetError("member %s: address %s (network %s) is held by guest '%s'"
                                 % (name, address, network, holder.get(address, "?")))
        node = dict(layout, taken_cpus=frozenset(taken_cpus), taken_ips=frozenset(taken_ips))
        current = guest["view"] if guest is not None else None
        try:
            resolved = resolve(name, spec, node, layer_list, current)
        except VseError as exc:
            raise FleetError("member %s: %s" % (name, exc))
        resolved["metadata"]["fleet"] = {"name": fleet, "index": str(index + 1)}
        if guest is not None:
            resolved["uuid"] = guest["dom"].UUIDString()
        for cpus in resolved["cputune"].get("vcpupin", {}).values():
            taken_cpus |= parse_cpulist(cpus)
        for address in resolved["addresses"].values():
            taken_ips.add(address)
            holder[address] = name
        xml = build_domain_xml(resolved)
        members.append({"index": index + 1, "name": name, "spec": spec, "resolved": resolved, "xml": xml,
                        "view": owned_view(xml), "guest": guest})
    return members


def _explicit_addresses(spec):
    return {net["name"]: net["ip"].split("/")[0] for net in spec.get("networks") or [] if net.get("ip")}


def check_files(members, adoptable=()):
    """Masters, kernels and plain volumes exist; new overlay paths do not (unless a killed run of
    this fleet made them, ``adoptable``). Returns the overlays to create, each with its member."""
    seen = set()
    to_create = []
    for member in members:
        resolved = member["resolved"]
        for path, what in ((resolved["os"].get("kernel"), "boot.kernel"), (resolved["os"].get("initrd"), "boot.initrd")):
            if path and path not in seen:
                if not os.path.isfile(path):
                    raise FleetError("member %s: %s %s does not exist" % (member["name"], what, path))
                seen.add(path)
        for disk in resolved["disks"]:
            if disk.get("master"):
                if disk["master"] not in seen:
                    if not os.path.isfile(disk["master"]):
                        raise FleetError("member %s: disks (%s).master: master image %s does not exist"
                                         % (member["name"], disk["dev"], disk["master"]))
                    seen.add(disk["master"])
                if not os.path.exists(disk["path"]):
                    to_create.append(dict(disk, member=member["name"]))
                elif member["guest"] is None and disk["path"] not in adoptable:
                    raise FleetError("member %s: disks (%s): %s already exists and this fleet did not create it; "
                                     "it is left untouched: remove it or choose other member names"
                                     % (member["name"], disk["dev"], disk["path"]))
                elif disk["path"] in adoptable and storage.qcow2_backing_file(disk["path"]) != disk["master"]:
                    to_create.append(dict(disk, member=member["name"], replace=True))
            elif not os.path.exists(disk["path"]):
                raise FleetError("member %s: disks (%s).volume: %s does not exist" % (member["name"], disk["dev"], disk["path"]))
    return to_create


def wanted_running(members, start):
    """Names of the members that should run: the first ``start`` (every member for -1)."""
    count = len(members) if start is None or start < 0 else min(start, len(members))
    return set(member["name"] for member in members[:count])


def summary(member):
    resolved = member["resolved"]
    return {"vcpus": resolved["vcpus"], "memory_mib": resolved["memory_kib"] // 1024,
            "addresses": resolved["addresses"], "hostname": resolved["hostname"],
            "overlays": (resolved["metadata"].get("overlays") or {})}


def classify(members):
    """Per member: ``create`` (new), ``update`` (persistent definition differs) or ``keep``."""
    for member in members:
        guest = member["guest"]
        if guest is None:
            member["action"] = "create"
            member["changes"] = []
        else:
            member["changes"] = compare(member["view"], guest["view"])
            member["action"] = "update" if member["changes"] else "keep"
    return members


def removals(fleet, names, guests, force):
    """Members of the fleet that are not wanted any more (highest first), FleetError for running ones without force."""
    wanted = set(names)
    gone = [name for name, guest in guests.items() if fleet_of(guest["view"]) == fleet and name not in wanted]
    gone.sort(key=lambda name: (-int((guests[name]["view"]["metadata"].get("fleet") or {}).get("index") or 0), name))
    running = [name for name in gone if guests[name]["active"]]
    if running and not force:
        raise FleetError("force: members %s are running and would be removed; set force=true to destroy them"
                         % ", ".join(sorted(running)))
    return gone


# --------------------------------------------------------------------------------------------
# Applying, in batches, and rolling back


class MemberFailure(Exception):
    """A step failed for one member: ``member``, ``action``, ``cause``."""

    def __init__(self, member, action, cause):
        Exception.__init__(self, "member %s (%s): %s" % (member, action, cause))
        self.member = member
        self.action = action
        self.cause = cause


def batches(items, size):
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def ensure_pools(conn, overlays, journal, error_text):
    """One pool per overlay directory, ensured (and refreshed) once; created ones go in the journal."""
    pools = {}
    for disk in overlays:
        if disk["pool_dir"] in pools:
            continue
        if storage.find_pool(conn, disk["pool_dir"], disk.get("pool")) is None:
            journal.record(pools=[disk["pool_dir"]],
                           directories=[] if os.path.isdir(disk["pool_dir"]) else [disk["pool_dir"]])
        try:
            pools[disk["pool_dir"]] = storage.ensure_pool(conn, disk["pool_dir"], disk.get("pool"))[0]
        except Exception as exc:  # libvirtError, OSError
            raise MemberFailure(disk["member"], "create pool %s" % disk["pool_dir"], error_text(exc))
    return pools


def create_overlays(conn, overlays, pools, batch_size, journal, error_text):
    done = 0
    for batch in batches(overlays, batch_size):
        journal.record(phase="overlays", overlays=[disk["path"] for disk in batch])
        for disk in batch:
            try:
                if disk.get("replace"):
                    storage.delete_volumes(conn, [disk["path"]])
                size = disk["size"] * 1024 * 1024 if disk.get("size") else None
                storage.create_overlay_in_pool(pools[disk["pool_dir"]], disk["member"], disk["dev"], disk["master"], size)
            except Exception as exc:  # libvirtError, OSError
                raise MemberFailure(disk["member"], "create overlay %s" % disk["path"], error_text(exc))
        done += len(batch)
        journal.record(progress=dict(journal.data["progress"], overlays=done))


def define_members(conn, members, batch_size, journal, libvirt, error_text):
    done = 0
    for batch in batches(members, batch_size):
        journal.record(phase="define",
                       domains=[m["name"] for m in batch if m["guest"] is None],
                       redefined={m["name"]: m["guest"]["dom"].XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                                  for m in batch if m["guest"] is not None})
        for member in batch:
            try:
                member["dom"] = conn.defineXML(member["xml"])
            except libvirt.libvirtError as exc:
                raise MemberFailure(member["name"], "define", error_text(exc))
        done += len(batch)
        journal.record(progress=dict(journal.data["progress"], defined=done))


def start_members(conn, names, concurrency, journal, libvirt, error_text):
    """Start the named members, ``concurrency`` at a time on the one connection; first failure raises."""
    if not names:
        return
    journal.record(phase="start", started_members=names)

    def start_one(name):
        try:
            conn.lookupByName(name).create()
            return name, None
        except libvirt.libvirtError as exc:
            return name, error_text(exc)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(start_one, names))
    for name, error in results:
        if error:
            raise MemberFailure(name, "start", error)
    journal.record(progress=dict(journal.data["progress"], started=len(names)))


def remove_members(conn, guests, names, libvirt):
    """Destroy (if running), undefine and delete the overlays of members; returns the overlays deleted."""
    flags = 0
    for flag in UNDEFINE_FLAGS_NAMES:
        flags |= getattr(libvirt, flag, 0)
    overlays = []
    for name in names:
        guest = guests[name]
        dom = guest["dom"]
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(flags)
        overlays.extend(sorted((guest["view"]["metadata"].get("overlays") or {}).values()))
    return storage.delete_volumes(conn, [path for path in overlays if os.path.exists(path)])


def rollback(conn, journal, libvirt):
    """Undo what the journal lists, newest first; returns what was undone. Errors are collected, not raised."""
    data = journal.data
    undone = {"stopped": [], "undefined": [], "restored": [], "overlays": [], "pools": [], "errors": []}

    def attempt(what, func, *args):
        try:
            return func(*args)
        except Exception as exc:  # keep rolling back the rest
            undone["errors"].append("%s: %s" % (what, exc))
            return None

    def lookup(name):
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError:
            return None

    for name in data.get("started_members") or []:
        dom = lookup(name)
        if dom is not None and dom.isActive():
            attempt("destroy %s" % name, dom.destroy)
            undone["stopped"].append(name)
    for name in data.get("domains") or []:
        dom = lookup(name)
        if dom is not None:
            if dom.isActive():
                attempt("destroy %s" % name, dom.destroy)
            attempt("undefine %s" % name, dom.undefine)
            undone["undefined"].append(name)
    for name, xml in sorted((data.get("redefined") or {}).items()):
        if name in (data.get("domains") or []):
            continue   # created by a killed run of this fleet: undefined above, nothing older to restore
        if attempt("restore %s" % name, conn.defineXML, xml) is not None:
            undone["restored"].append(name)
    present = [path for path in data.get("overlays") or [] if os.path.exists(path)]
    undone["overlays"] = attempt("delete overlays", storage.delete_volumes, conn, present) or []
    for directory in data.get("pools") or []:
        pool = storage.find_pool_by_path(conn, directory)
        if pool is None:
            continue
        pool.refresh(0)
        if not pool.listVolumes():
            if pool.isActive():
                attempt("stop pool %s" % directory, pool.destroy)
            attempt("undefine pool %s" % directory, pool.undefine)
            undone["pools"].append(directory)
    for directory in data.get("directories") or []:
        if os.path.isdir(directory) and not os.listdir(directory):
            attempt("remove directory %s" % directory, os.rmdir, directory)
    return undone


def describe_rollback(undone):
    parts = ["%d %s" % (len(undone[key]), label) for key, label in
             (("undefined", "domains undefined"), ("restored", "definitions restored"), ("stopped", "members stopped"),
              ("overlays", "overlays deleted"), ("pools", "pools removed")) if undone[key]]
    text = "rolled back: " + (", ".join(parts) if parts else "nothing had been created")
    if undone["errors"]:
        text += "; rollback errors: " + "; ".join(undone["errors"])
    return text
