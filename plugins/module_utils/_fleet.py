# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleets: many guests of one VSE, created all together or not at all.

A fleet is a name and a list of member names (a pattern such as ``job42-[001:200]``, or a count).
Every member is an ordinary VSE guest (``_vse.place`` and ``_vse.resolve`` decide it, with THE
placement policy; ``_domain.build_domain_xml`` builds it, ``_storage`` makes its overlay) whose
metadata also carries ``<hpcvirt:fleet name=.../>``, which is how a later run finds the members.

A run is transactional, and its plan is what it executes:

1. **validate** everything against the node (``_node.NodeState``) before touching anything:
   names free, addresses free, master images present, room for the overlays in each pool
   directory, memory for the members to start;
2. **plan** typed steps in batches (``create_pool``, ``create_overlays``, ``redefine``,
   ``define``, ``start``, ``remove``), carried out by ``_plan.execute`` with a journal
   (``/var/lib/hpcvirt/journal/fleet-<name>.json``, ``_journal.Journal``) that lists, before the
   first step, everything the run may create (pools, directories, overlays, domains, the
   definitions it replaces, the members it starts) and counts the steps done;
3. on a failure, **roll back** exactly what the journal lists, as a plan of its own
   (``stop``/``undefine``/``restore``/``delete_overlays``/``remove_pool``/``remove_directory``)
   built from what exists. Validation guaranteed that none of those existed before the run, so
   undoing them never touches older state.

A run that is killed leaves its journal. The next run of the same fleet either completes it (the
request still validates: what the journal lists is adopted as the fleet's own, and stays listed,
so a failure now rolls it back too) or rolls it back. Changes on a node are serialised by
``_journal.NodeLock``. Check mode reads only: no lock, no journal, no directory.
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.hpcvirt.regime.plugins.module_utils import _plan
from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage
from ansible_collections.hpcvirt.regime.plugins.module_utils._address import AddressError, range_addresses
from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import build_domain_xml, compare, owned_view
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._journal import Journal, NodeLock
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import domain_state
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import view_of
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, StepFailed
from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import (
    VseError,
    check_domain_name,
    check_layer_keys,
    layer_names,
    merge_dicts,
    merge_layers,
    place,
    resolve,
    undefine_flags,
    validate,
)

MAX_MEMBERS = 5000
# Room a new overlay needs in its pool directory: a qcow2 overlay of a qcow2 master starts at
# 196,616 bytes (header, L1 table, refcount block); the rest is margin for the first writes.
OVERLAY_BYTES = 256 * 1024
# Memory a started member costs beyond its own RAM (QEMU itself, its page tables, TCG buffers).
QEMU_OVERHEAD_MIB = 64
MAX_BATCH = 1000
OVERLAY_KEYS = ("path", "dev", "master", "pool", "pool_dir", "size", "member", "replace")
MAX_CONCURRENCY = 64
MAX_LOCK_TIMEOUT = 86400

_RANGE = re.compile(r"\[([^\[\]]*)\]")
FLEET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FleetError(HpcvirtError, ValueError):
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
# What the node holds (the NodeState's guests)


def fleet_of(guest):
    """The fleet a guest (``_node.read_guest``) belongs to, from its hpcvirt metadata, or None."""
    return ((guest.get("hpcvirt") or {}).get("fleet") or {}).get("name")


def fleet_index(guest):
    return int(((guest.get("hpcvirt") or {}).get("fleet") or {}).get("index") or 0)


def free_space(directory):
    """(bytes, inodes) free for an unprivileged writer in ``directory`` or its nearest existing parent."""
    while not os.path.isdir(directory):
        directory = os.path.dirname(directory.rstrip("/")) or "/"
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize, (stat.f_favail if stat.f_files else None)


def check_memory(to_start, topology):
    """Memory admission for the members about to start; FleetError naming the shortfall."""
    plain = [m for m in to_start if not m["resolved"].get("hugepages_kib")]
    need = sum(m["resolved"]["memory_kib"] // 1024 + QEMU_OVERHEAD_MIB for m in plain)
    have = topology.mem_available_kb // 1024
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
        pool = topology.hugepages.get(size)
        free = pool.free if pool is not None else 0
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
# Building the members and the plan


def resolve_members(fleet, names, specs, layer_list, node, libvirt):
    """Resolve every member against the node; FleetError naming the member when the node cannot take it.

    ``node``: the ``_node.NodeState`` (with guests). Each member is placed by THE placement policy
    in member order, so the CPUs one takes are not given to the next; addresses other guests hold
    are never given out.
    """
    wanted = set(names)
    taken_ips, holder = set(), {}
    for guest in node.guests:
        if guest["name"] in wanted and fleet_of(guest) == fleet:
            continue   # a member keeps what it holds (resolve gets its current view)
        for ip in ((guest.get("hpcvirt") or {}).get("addresses") or {}).values():
            taken_ips.add(ip)
            holder[ip] = guest["name"]
    view = view_of(node)
    members = []
    for index, (name, spec) in enumerate(zip(names, specs)):
        guest = node.guest(name)
        if guest is not None and fleet_of(guest) != fleet:
            owner = fleet_of(guest)
            raise FleetError("member %s: a domain of that name already exists and %s; choose other names"
                             % (name, "belongs to fleet '%s'" % owner if owner else "is not a member of fleet '%s'" % fleet))
        for network, address in _explicit_addresses(spec).items():
            if address in taken_ips:
                raise FleetError("member %s: address %s (network %s) is held by guest '%s'"
                                 % (name, address, network, holder.get(address, "?")))
        dom = node.domains.get(name) if guest is not None else None
        current = owned_view(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) if dom is not None else None
        try:
            resolved = resolve(name, spec, place(view, name, spec, guest, current), layer_list, current,
                               frozenset(taken_ips))
        except VseError as exc:
            raise FleetError("member %s: %s" % (name, exc))
        resolved["metadata"]["fleet"] = {"name": fleet, "index": str(index + 1)}
        if dom is not None:
            resolved["uuid"] = dom.UUIDString()
        for address in resolved["addresses"].values():
            taken_ips.add(address)
            holder[address] = name
        xml = build_domain_xml(resolved)
        members.append({"index": index + 1, "name": name, "spec": spec, "resolved": resolved, "xml": xml,
                        "view": owned_view(xml), "guest": guest, "current": current, "dom": dom})
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
        if member["current"] is None:
            member["action"] = "create"
            member["changes"] = []
        else:
            member["changes"] = compare(member["view"], member["current"])
            member["action"] = "update" if member["changes"] else "keep"
    return members


def removals(fleet, names, node, force):
    """Members of the fleet not wanted any more (highest first); FleetError for running ones without force."""
    wanted = set(names)
    gone = [guest for guest in node.guests if fleet_of(guest) == fleet and guest["name"] not in wanted]
    gone.sort(key=lambda guest: (-fleet_index(guest), guest["name"]))
    running = sorted(guest["name"] for guest in gone if guest["active"])
    if running and not force:
        raise FleetError("force: members %s are running and would be removed; set force=true to destroy them"
                         % ", ".join(running))
    return gone


def batches(items, size):
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def span(names):
    """A batch's target: ``a`` or ``a .. z``."""
    return names[0] if len(names) == 1 else "%s .. %s" % (names[0], names[-1])


# --------------------------------------------------------------------------------------------
# The actions a fleet plan is made of (each step is one batch)


class MemberFailure(HpcvirtError):
    """A step failed for one member: ``member``, ``action``, ``cause``."""

    def __init__(self, member, action, cause):
        HpcvirtError.__init__(self, "member %s (%s): %s" % (member, action, cause), member=member, action=action)
        self.member = member
        self.action = action
        self.cause = cause


def _error_text(exc):
    return _plan.error_message(exc)


def _progress(ctx, key, count):
    journal = ctx.get("journal")
    if journal is not None and journal.data is not None:
        progress = journal.data.setdefault("progress", {})
        progress[key] = progress.get(key, 0) + count


def _lookup(ctx, name):
    try:
        return ctx.conn.lookupByName(name)
    except ctx.libvirt.libvirtError:
        return None


def _pool(ctx, disk):
    """The pool of an overlay's directory, ensured (active, refreshed) once per run."""
    pools = ctx.pools
    if disk["pool_dir"] not in pools:
        pools[disk["pool_dir"]] = storage.ensure_pool(ctx.conn, disk["pool_dir"], disk.get("pool"))[0]
    return pools[disk["pool_dir"]]


def _run_adopt(ctx, step):
    # The journal begun for this run already lists what the interrupted run created (so a failure
    # now rolls that back too); record which run it took over.
    if ctx.get("journal") is not None:
        ctx.journal.update(adopted=step.detail["started_at"])


def _run_create_pool(ctx, step):
    try:
        pool, _created = storage.ensure_pool(ctx.conn, step.target, step.detail.get("pool"))
    except Exception as exc:  # libvirtError, OSError
        raise MemberFailure(step.detail["member"], "create pool %s" % step.target, _error_text(exc))
    ctx.pools[step.target] = pool


def _run_create_overlays(ctx, step):
    created = []
    for disk in step.detail["overlays"]:
        try:
            if disk.get("replace"):
                storage.delete_volumes(ctx.conn, [disk["path"]])
            size = disk["size"] * 1024 * 1024 if disk.get("size") else None
            created.append(storage.create_overlay_in_pool(_pool(ctx, disk), disk["member"], disk["dev"],
                                                          disk["master"], size))
        except Exception as exc:  # libvirtError, OSError
            raise MemberFailure(disk["member"], "create overlay %s" % disk["path"], _error_text(exc))
    _progress(ctx, "overlays", len(created))
    return created


def _run_define(ctx, step):
    for name in step.detail["members"]:
        try:
            ctx.doms[name] = ctx.conn.defineXML(ctx.xml[name])
        except ctx.libvirt.libvirtError as exc:
            raise MemberFailure(name, step.action.name, _error_text(exc))
    _progress(ctx, "defined", len(step.detail["members"]))


def _run_start(ctx, step):
    """Start the batch's members, ``concurrency`` at a time on the one connection; first failure raises."""
    def start_one(name):
        try:
            dom = ctx.doms.get(name) or ctx.conn.lookupByName(name)
            dom.create()
            ctx.doms[name] = dom
            return name, None
        except ctx.libvirt.libvirtError as exc:
            return name, _error_text(exc)

    with ThreadPoolExecutor(max_workers=max(1, step.detail["concurrency"])) as pool:
        results = list(pool.map(start_one, step.detail["members"]))
    for name, error in results:
        if error:
            raise MemberFailure(name, "start", error)
    _progress(ctx, "started", len(results))


def _destroy_and_undefine(ctx, name):
    """Power a member off if it runs and undefine it; False when it is not defined (any more)."""
    dom = _lookup(ctx, name)
    if dom is None:
        return False
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(undefine_flags(ctx.libvirt))
    return True


def _run_remove(ctx, step):
    """Destroy (if running), undefine and delete the overlays of members; returns the overlays deleted."""
    overlays = []
    for name in step.detail["members"]:
        _destroy_and_undefine(ctx, name)
        ctx.removed.append(name)
        overlays.extend(step.detail["overlays"].get(name) or [])
    return storage.delete_volumes(ctx.conn, [path for path in overlays if os.path.exists(path)])


def _run_rollback_stop(ctx, step):
    for name in step.detail["members"]:
        dom = _lookup(ctx, name)
        if dom is not None and dom.isActive():
            dom.destroy()


def _run_rollback_undefine(ctx, step):
    return [name for name in step.detail["members"] if _destroy_and_undefine(ctx, name)]


def _run_rollback_restore(ctx, step):
    for name in step.detail["members"]:
        ctx.conn.defineXML(step.detail["xml"][name])


def _run_rollback_delete_overlays(ctx, step):
    present = [path for path in step.detail["paths"] if os.path.exists(path)]
    return storage.delete_volumes(ctx.conn, present)


def _run_rollback_remove_pool(ctx, step):
    """Stop and undefine a pool this fleet created, unless something else has put volumes in it."""
    pool = storage.find_pool_by_path(ctx.conn, step.target)
    if pool is None:
        return False
    if pool.isActive():
        pool.refresh(0)
        if pool.listVolumes():
            return False
        pool.destroy()
    pool.undefine()
    return True


def _run_rollback_remove_directory(_ctx, step):
    if os.path.isdir(step.target) and not os.listdir(step.target):
        os.rmdir(step.target)
        return True
    return False


ADOPT = Action("complete_interrupted_run", _run_adopt, phase="validate", live=False)
TAKE_OVER = Action("rollback_interrupted_run", _run_adopt, phase="rollback", live=False)
CREATE_POOL = Action("create_pool", _run_create_pool, phase="pools")
CREATE_OVERLAYS = Action("create_overlays", _run_create_overlays, phase="overlays")
REDEFINE = Action("redefine", _run_define, phase="define")
DEFINE = Action("define", _run_define, phase="define")
START = Action("start", _run_start, phase="start")
REMOVE = Action("remove", _run_remove, phase="remove")
ROLLBACK_STOP = Action("rollback_stop", _run_rollback_stop, phase="rollback")
ROLLBACK_UNDEFINE = Action("rollback_undefine", _run_rollback_undefine, phase="rollback")
ROLLBACK_RESTORE = Action("rollback_restore", _run_rollback_restore, phase="rollback")
ROLLBACK_DELETE_OVERLAYS = Action("rollback_delete_overlays", _run_rollback_delete_overlays, phase="rollback")
ROLLBACK_REMOVE_POOL = Action("rollback_remove_pool", _run_rollback_remove_pool, phase="rollback")
ROLLBACK_REMOVE_DIRECTORY = Action("rollback_remove_directory", _run_rollback_remove_directory, phase="rollback")
CREATING = (CREATE_POOL, CREATE_OVERLAYS, REDEFINE, DEFINE, START)


# --------------------------------------------------------------------------------------------
# Journal data: what a run may create, listed before its first step

LISTS = ("pools", "directories", "overlays", "domains", "started_members")


def journal_name(fleet):
    return "fleet-%s" % fleet


def empty_lists():
    data = {key: [] for key in LISTS}
    data["redefined"] = {}
    return data


def merge_lists(older, newer):
    """What both runs may have created; the older run's saved definitions win (they are the originals)."""
    merged = {key: sorted(set(older.get(key) or []) | set(newer.get(key) or [])) for key in LISTS}
    redefined = dict(newer.get("redefined") or {})
    redefined.update(older.get("redefined") or {})
    merged["redefined"] = redefined
    return merged


# --------------------------------------------------------------------------------------------
# Planning


def check_params(params):
    """Bounded options (the field and why on a bad one)."""
    if not FLEET_NAME.fullmatch(params["name"] or "") or len(params["name"]) > 100:
        raise FleetError("name: '%s' is not a fleet name (at most 100 letters, digits, '.', '_', '-')" % params["name"])
    for key, low, high in (("batch_size", 1, MAX_BATCH), ("start_concurrency", 1, MAX_CONCURRENCY),
                           ("lock_timeout", 0, MAX_LOCK_TIMEOUT)):
        if not low <= params[key] <= high:
            raise FleetError("%s: %d is outside %d..%d" % (key, params[key], low, high))
    if params.get("start") is not None and params["start"] < -1:
        raise FleetError("start: %d is not a number of members (-1 means all)" % params["start"])
    return params


def fleet_layers(params):
    layers = list(params["layers"] or [])
    if params.get("vse") is not None:
        layers.append({"name": "vse", "spec": params["vse"]})
    return layers


class Run:
    """One fleet run: the plan, the context it executes with, the journal data and the report."""

    def __init__(self, node, params, libvirt, older):
        self.params = params
        self.plan = Plan()
        self.ctx = Context(conn=node.conn, libvirt=libvirt, pools={}, doms={}, xml={}, removed=[], journal=None)
        self.node = node
        self.older = older
        self.lists = empty_lists()
        self.members = []
        self.gone = []
        self.to_start = []
        self.error = None
        self.recovered = {}
        self.undone = None


def validate_request(run):
    """Everything checked before anything is created; fills the run's members, overlays, starts, removals."""
    params, node = run.params, run.node
    names = member_names(params["name"], params["pattern"], params["count"])
    layers = fleet_layers(params)
    base, _provenance = merge_layers(layers)
    specs = member_specs(params["name"], base, names, params["hostnames"], params["addresses"], params["overrides"])
    run.members = classify(resolve_members(params["name"], names, specs, layer_names(layers), node, run.ctx.libvirt))
    adoptable = set((run.older or {}).get("overlays") or [])
    overlays = check_files(run.members, adoptable)
    check_space([disk for disk in overlays if not disk.get("replace")])
    running = wanted_running(run.members, params["start"])
    run.to_start = [m for m in run.members if m["name"] in running and not (m["guest"] and m["guest"]["active"])]
    check_memory(run.to_start, node.topology)
    run.gone = removals(params["name"], names, node, params["force"])
    return overlays


def plan_present(run, overlays):
    """The creation plan, in batches, and the journal lists of what it may create."""
    plan, params, size = run.plan, run.params, run.params["batch_size"]
    lists = run.lists
    if run.older is not None:
        plan.add(ADOPT, journal_path(run), before="journal", after=None, started_at=run.older.get("started_at"))
    seen = set()
    for disk in overlays:
        if disk["pool_dir"] in seen:
            continue
        seen.add(disk["pool_dir"])
        if storage.find_pool(run.ctx.conn, disk["pool_dir"], disk.get("pool")) is None:
            plan.add(CREATE_POOL, disk["pool_dir"], before=None, after=disk.get("pool") or storage.pool_name_for(disk["pool_dir"]),
                     pool=disk.get("pool"), member=disk["member"])
            lists["pools"].append(disk["pool_dir"])
            if not os.path.isdir(disk["pool_dir"]):
                lists["directories"].append(disk["pool_dir"])
    for batch in batches(overlays, size):
        members = [disk["member"] for disk in batch]
        plan.add(CREATE_OVERLAYS, span(members), before=None,
                 after={disk["path"]: {"backing": disk["master"]} for disk in batch}, members=members,
                 overlays=[{k: v for k, v in disk.items() if k in OVERLAY_KEYS} for disk in batch])
        lists["overlays"].extend(disk["path"] for disk in batch)
    updates = [m for m in run.members if m["action"] == "update"]
    creates = [m for m in run.members if m["action"] == "create"]
    for batch in batches(updates, size):
        names = [m["name"] for m in batch]
        plan.add(REDEFINE, span(names), before={m["name"]: {f: have for f, have, _unused in m["changes"]} for m in batch},
                 after={m["name"]: {f: want for f, _unused, want in m["changes"]} for m in batch}, members=names)
        lists["redefined"].update({m["name"]: m["dom"].XMLDesc(run.ctx.libvirt.VIR_DOMAIN_XML_INACTIVE) for m in batch})
    for batch in batches(creates, size):
        names = [m["name"] for m in batch]
        plan.add(DEFINE, span(names), before=None, after={m["name"]: summary(m) for m in batch}, members=names)
        lists["domains"].extend(names)
    for member in updates + creates:
        run.ctx.xml[member["name"]] = member["xml"]
    for batch in batches(run.to_start, size):
        names = [m["name"] for m in batch]
        plan.add(START, span(names), before={n: "shutoff" for n in names}, after={n: "running" for n in names},
                 members=names, concurrency=params["start_concurrency"])
        lists["started_members"].extend(names)
    plan_removals(run)


def plan_removals(run):
    for batch in batches(run.gone, run.params["batch_size"]):
        names = [guest["name"] for guest in batch]
        run.plan.add(REMOVE, span(names), before={g["name"]: "running" if g["active"] else "shutoff" for g in batch},
                     after=None, members=names,
                     overlays={g["name"]: sorted(((g.get("hpcvirt") or {}).get("overlays") or {}).values()) for g in batch})


def plan_rollback(conn, libvirt, data, batch_size=MAX_BATCH):
    """The plan that undoes what journal ``data`` lists and still exists, newest first."""
    plan = Plan()

    def existing(names):
        found = []
        for name in names:
            try:
                found.append((name, conn.lookupByName(name)))
            except libvirt.libvirtError:
                continue
        return found

    domains = set(data.get("domains") or [])
    running = [name for name, dom in existing(data.get("started_members") or []) if name not in domains and dom.isActive()]
    for batch in batches(running, batch_size):
        plan.add(ROLLBACK_STOP, span(batch), before="running", after="shutoff", members=batch)
    defined = [name for name, _dom in existing(sorted(domains))]
    for batch in batches(defined, batch_size):
        plan.add(ROLLBACK_UNDEFINE, span(batch), before="defined", after=None, members=batch)
    restore = sorted(name for name in (data.get("redefined") or {}) if name not in domains)
    for batch in batches(restore, batch_size):
        plan.add(ROLLBACK_RESTORE, span(batch), before="redefined", after="restored", members=batch,
                 xml={name: data["redefined"][name] for name in batch})
    present = [path for path in data.get("overlays") or [] if os.path.exists(path)]
    for batch in batches(present, batch_size):
        plan.add(ROLLBACK_DELETE_OVERLAYS, span([os.path.basename(p) for p in batch]), before="present", after=None,
                 paths=batch)
    for directory in data.get("pools") or []:
        if storage.find_pool_by_path(conn, directory) is not None:
            plan.add(ROLLBACK_REMOVE_POOL, directory, before="defined", after=None)
    for directory in data.get("directories") or []:
        if os.path.isdir(directory):
            plan.add(ROLLBACK_REMOVE_DIRECTORY, directory, before="present", after=None)
    return plan


def journal_path(run):
    return Journal(journal_name(run.params["name"]), run.node.root).path


def plan_fleet(node, params, libvirt, timings):
    """The run of the fleet module on ``node``: validate, then plan (a roll-back of an interrupted
    run whose request no longer validates, removal for ``state=absent``, creation otherwise).

    Reads only: nothing is written until ``apply``.
    """
    check_params(params)
    older = Journal(journal_name(params["name"]), node.root).previous()
    run = Run(node, params, libvirt, older)
    with timings.measure("validate"):
        if params["state"] == "absent":
            run.gone = removals(params["name"], [], node, params["force"])
        else:
            try:
                overlays = validate_request(run)
            except HpcvirtError as exc:
                if older is None:
                    raise
                run.error = str(exc)
    if run.older is not None and (params["state"] == "absent" or run.error):
        run.plan.add(TAKE_OVER, journal_path(run), before="journal", after=None, started_at=older.get("started_at"))
        run.plan.extend(plan_rollback(node.conn, libvirt, older, params["batch_size"]))
        run.lists = merge_lists(older, empty_lists())
        run.recovered = {"action": "rollback", "journal": journal_path(run)}
        if params["state"] == "absent":
            plan_removals(run)
        return run
    if params["state"] == "present":
        plan_present(run, overlays)
    else:
        plan_removals(run)
    if older is not None:
        run.lists = merge_lists(older, run.lists)
        run.recovered = {"action": "completed", "journal": journal_path(run)}
    return run


# --------------------------------------------------------------------------------------------
# Executing


def node_lock(node, params, check_mode):
    """The node lock for a real run; nothing (no directory, no file) in check mode."""
    if check_mode:
        from contextlib import nullcontext
        return nullcontext()
    return NodeLock(node.root, params["lock_timeout"], what="another hpcvirt change (a fleet, a regime change)")


def apply(run, check_mode, timings):
    """Execute the run's plan with its journal; on a failure part-way, execute the exact roll-back.

    Raises FleetError naming the member and the cause (and what was rolled back).
    """
    if check_mode:
        if run.error:
            raise FleetError("%s; the interrupted run's journal %s was left for a real run"
                             % (run.error, run.recovered["journal"]))
        return
    journal = Journal(journal_name(run.params["name"]), run.node.root, fleet=run.params["name"], progress={},
                      **run.lists)
    run.ctx.journal = journal
    try:
        _plan.execute(run.plan, run.ctx, False, timings, journal=journal)
    except StepFailed as failed:
        if failed.step.action in CREATING:
            run.undone = rollback(run, journal, timings)
            cause = failed.error if isinstance(failed.error, MemberFailure) else None
            raise FleetError("%s; %s" % (cause or failed, describe_rollback(run.undone)),
                             member=getattr(cause, "member", None), action=getattr(cause, "action", None),
                             rollback=run.undone)
        if failed.step.action is REMOVE:
            journal.finish()   # what this run created stays; the removal is planned again next run
        raise
    if run.recovered.get("action") == "rollback":
        run.undone = undone_by(run.plan)
        run.recovered = dict(run.recovered, action="rolled_back", undone=run.undone)
    if run.error:
        raise FleetError("%s; the interrupted run's journal was rolled back (%s)"
                         % (run.error, describe_rollback(run.undone)), recovered=run.recovered)


def rollback(run, journal, timings):
    """Undo what the journal lists (this run and an adopted interrupted one), as a plan of its own."""
    plan = plan_rollback(run.ctx.conn, run.ctx.libvirt, journal.data or run.lists, run.params["batch_size"])
    lists = {key: (journal.data or run.lists).get(key) for key in LISTS + ("redefined",)}
    undo = Journal(journal.name, journal.root, fleet=run.params["name"], phase="rollback", **lists)
    try:
        _plan.execute(plan, run.ctx, False, timings, journal=undo)
    except StepFailed as failed:
        undone = undone_by(Plan(plan.steps[:failed.index]))
        undone["errors"] = [str(failed)]
        return undone
    if not plan:
        journal.finish()
    return undone_by(plan)


def undone_by(plan):
    """What a roll-back plan undid, by kind."""
    undone = {"stopped": [], "undefined": [], "restored": [], "overlays": [], "pools": [], "errors": []}
    for step in plan:
        if step.action is ROLLBACK_STOP:
            undone["stopped"].extend(step.detail["members"])
        elif step.action is ROLLBACK_UNDEFINE:
            undone["undefined"].extend(step.result or [])
        elif step.action is ROLLBACK_RESTORE:
            undone["restored"].extend(step.detail["members"])
        elif step.action is ROLLBACK_DELETE_OVERLAYS:
            undone["overlays"].extend(step.result or [])
        elif step.action is ROLLBACK_REMOVE_POOL and step.result:
            undone["pools"].append(step.target)
    return undone


def describe_rollback(undone):
    parts = ["%d %s" % (len(undone[key]), label) for key, label in
             (("undefined", "domains undefined"), ("restored", "definitions restored"), ("stopped", "members stopped"),
              ("overlays", "overlays deleted"), ("pools", "pools removed")) if undone[key]]
    text = "rolled back: " + (", ".join(parts) if parts else "nothing had been created")
    if undone["errors"]:
        text += "; rollback errors: " + "; ".join(undone["errors"]) + " (the journal stays for the next run)"
    return text


# --------------------------------------------------------------------------------------------
# Reporting


def report(run):
    """The module's return values besides plan, diff and timings."""
    started = set(m["name"] for m in run.to_start)
    results = []
    for member in run.members:
        dom = run.ctx.doms.get(member["name"]) or member["dom"]
        results.append(dict(name=member["name"], index=member["index"], action=member["action"],
                            state=domain_state(dom) if dom is not None else "absent",
                            started=member["name"] in started, **summary(member)))
    removed = set(run.ctx.removed)
    for guest in run.gone:
        results.append({"name": guest["name"], "action": "remove",
                        "state": "absent" if guest["name"] in removed else guest["state"]})
    counts = {action: 0 for action in ("create", "update", "keep")}
    for member in run.members:
        counts[member["action"]] += 1
    counts["remove"] = len(run.gone)
    counts["start"] = len(run.to_start)
    restart = [m["name"] for m in run.members if m["action"] == "update" and m["guest"]["active"]]
    return {"members": results, "counts": counts, "restart_required": restart, "recovered": run.recovered,
            "journal": journal_path(run)}
