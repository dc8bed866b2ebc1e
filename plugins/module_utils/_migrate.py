# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live migration of a guest between nodes, and the choice of where guests go.

The pure part (unit-tested without libvirt): where a guest is (``locate``), the flags and typed
parameters of a migration, the destination's capacity for a guest, the shared placement it gets
on arrival, libvirt's job statistics in milliseconds and bytes, when to switch to post-copy, and
the destination of every guest of an evacuation (``choose_destinations``, ``spread`` or ``pack``).

The composition of the migrate module (``read_nodes``, ``plan_migration``, ``converge``): the
source is read once as a ``_node.NodeState``, the destination as a NodeState built from what its
libvirtd reports (the module runs on the source and cannot read the destination's sysfs or
cgroups: its pool comes from the ``dest_pool`` option, else every online CPU). The plan is typed
steps (``MIGRATE``, ``UNDEFINE_SOURCE``, ``PLACE``, ``RECORD``) carried out by ``_plan.execute``;
placement on arrival is ``_placement.desired_state`` against the destination's NodeState.

The live part drives libvirt: ``migrate_guest`` runs ``migrateToURI3`` (peer-to-peer: the source
daemon talks to the destination daemon itself) while a watcher thread follows the job (post-copy
switch, timeout), ``apply_placement`` pins the arrived guest.
"""

from __future__ import annotations

import re
import threading
import time
from xml.etree import ElementTree

from ansible_collections.hpcvirt.regime.plugins.module_utils import _placement
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    cpumap_to_set,
    format_cpulist,
    parse_cpulist,
    set_to_cpumap,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import _UNITS as LIBVIRT_UNITS
from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import write_domain_metadata
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import NodeState
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, StepFailed, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import now_iso

DISK_MODES = ("shared", "copy", "copy_incremental")
PLACEMENTS = ("shared", "keep")
STRATEGIES = ("spread", "pack")


class MigrationError(HpcvirtError):
    """A migration that did not happen, with where the guest is now (``guest_on``)."""

    def __init__(self, msg, guest_on=None, detail=None, **details):
        if guest_on is not None:
            details.setdefault("guest_on", guest_on)
        super().__init__(msg, **details)
        self.guest_on = guest_on
        self.detail = detail or {}


# --------------------------------------------------------------------------------- pure logic


def locate(source, destination):
    """What to do given the guest's presence on both nodes.

    ``source``/``destination`` are None (no such domain) or dicts with ``active``, ``persistent``,
    ``uuid`` and ``managed_save``. Returns one of:
    ``migrate`` (live, it runs on the source), ``migrate_offline`` (defined, shut off on the source),
    ``finish`` (it runs on the destination; the source still has a stale definition to remove),
    ``arrived`` (it runs on the destination only: nothing to move),
    or raises MigrationError naming why nothing can be done.
    """
    if source is None and destination is None:
        raise MigrationError("name: the guest is defined neither on the source nor on the destination")
    if source is not None and destination is not None and source["uuid"] != destination["uuid"]:
        raise MigrationError(
            "name: the destination already has a different domain of this name (uuid %s, the guest is %s)"
            % (destination["uuid"], source["uuid"]), guest_on="source")
    if destination is not None and destination["active"]:
        if source is not None and source["active"]:
            raise MigrationError("name: the guest is active on both nodes (a migration is in progress?)",
                                 guest_on="both")
        return "finish" if source is not None else "arrived"
    if source is None:
        raise MigrationError("name: the guest is only defined (shut off) on the destination; start it there",
                             guest_on="destination")
    if source["active"]:
        return "migrate"
    if source.get("managed_save"):
        raise MigrationError("name: the guest is preempted (managed save image) on the source; resume it "
                             "with hpcvirt.regime.checkpoint before migrating", guest_on="source")
    return "migrate_offline"


def migration_flag_names(action, disks="shared", unsafe=False, auto_converge=False, postcopy=False,
                         persistent_source=True):
    """Names of the VIR_MIGRATE_* flags for ``action`` (``migrate`` or ``migrate_offline``)."""
    names = ["VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST"]
    if persistent_source:
        names.append("VIR_MIGRATE_UNDEFINE_SOURCE")
    if action == "migrate_offline":
        return names + ["VIR_MIGRATE_OFFLINE"]
    names.insert(0, "VIR_MIGRATE_LIVE")
    if disks == "copy":
        names.append("VIR_MIGRATE_NON_SHARED_DISK")
    elif disks == "copy_incremental":
        names.append("VIR_MIGRATE_NON_SHARED_INC")
    if unsafe:
        names.append("VIR_MIGRATE_UNSAFE")
    if auto_converge:
        names.append("VIR_MIGRATE_AUTO_CONVERGE")
    if postcopy:
        names.append("VIR_MIGRATE_POSTCOPY")
    return names


def socket_uri(directory, name, suffix=""):
    """A ``unix://`` migration URI for a socket in ``directory`` named after the guest."""
    return "unix://%s/%s%s.sock" % (directory.rstrip("/"), name, suffix)


def migration_params(name, migrate_uri=None, socket_dir=None, bandwidth=None, bandwidth_postcopy=None,
                     disks="shared", copy_disks=(), disks_uri=None, auto_converge_initial=None,
                     auto_converge_increment=None):
    """Typed parameters of ``migrateToURI3`` keyed by libvirt's parameter names.

    Without ``migrate_uri`` or ``socket_dir`` libvirt picks the transport (TCP to the destination's
    host name); ``socket_dir`` gives per-guest UNIX sockets, which is how nodes sharing one machine
    (or one file system) migrate.
    """
    params = {}
    if migrate_uri:
        params["migrate_uri"] = migrate_uri
    elif socket_dir:
        params["migrate_uri"] = socket_uri(socket_dir, name)
    if bandwidth:
        params["bandwidth"] = int(bandwidth)
    if bandwidth_postcopy:
        params["bandwidth.postcopy"] = int(bandwidth_postcopy)
    if disks != "shared":
        if copy_disks:
            params["migrate_disks"] = list(copy_disks)
        if disks_uri:
            params["disks_uri"] = disks_uri
        elif socket_dir:
            params["disks_uri"] = socket_uri(socket_dir, name, "-disks")
    if auto_converge_initial is not None:
        params["auto_converge.initial"] = int(auto_converge_initial)
    if auto_converge_increment is not None:
        params["auto_converge.increment"] = int(auto_converge_increment)
    return params


def check_capacity(need, dest, reserve_memory_mb=0, vcpu_overcommit=0.0):
    """Problems (list of str, empty when it fits) of putting a guest that needs ``need`` on ``dest``.

    ``need``: memory_kb, vcpus, hugepages_kb (page size or None), hugepages (count).
    ``dest``: free_memory_kb, pool (set of CPUs), active_vcpus (of guests already there),
    free_hugepages ({page size kb: free count}).
    Memory: the guest's memory plus ``reserve_memory_mb`` must be free (hugepage-backed guests need
    free hugepages of their size instead). CPUs: the pool must not be empty and, with
    ``vcpu_overcommit`` > 0, the vCPUs on the pool after arrival must not exceed
    ``vcpu_overcommit`` x pool CPUs.
    """
    problems = []
    if need.get("hugepages_kb"):
        free = dest.get("free_hugepages", {}).get(need["hugepages_kb"], 0)
        if free < need["hugepages"]:
            problems.append("the guest needs %d free %d KiB hugepages, the destination has %d"
                            % (need["hugepages"], need["hugepages_kb"], free))
    else:
        wanted = need["memory_kb"] + reserve_memory_mb * 1024
        if dest["free_memory_kb"] < wanted:
            problems.append("the guest needs %d MiB of memory (%d MiB + %d MiB kept free), the destination has "
                            "%d MiB free" % (wanted // 1024, need["memory_kb"] // 1024, reserve_memory_mb,
                                             dest["free_memory_kb"] // 1024))
    pool = dest["pool"]
    if not pool:
        problems.append("the destination has no shared pool CPUs for a time-shared guest")
    elif vcpu_overcommit and vcpu_overcommit > 0:
        after = dest.get("active_vcpus", 0) + need["vcpus"]
        limit = vcpu_overcommit * len(pool)
        if after > limit:
            problems.append("%d vCPUs would float over %d pool CPUs (%s), more than the overcommit of %g allows "
                            "(%d)" % (after, len(pool), format_cpulist(pool), vcpu_overcommit, int(limit)))
    return problems


def desired_placement(dest, guest, cpu_shares=None, vcpu_quota=None):
    """The shared placement ``guest`` gets on the destination (a ``NodeState``): THE placement
    policy (``_placement.desired_state``), as comparable strings: vCPU pins, emulator (and I/O
    thread) pin, scheduler parameters. Shares and quota: the options, else the guest's metadata."""
    shares, quota = placement_from_metadata(guest.get("hpcvirt"), cpu_shares, vcpu_quota)
    request = _placement.normalise_request(0, {"name": guest["name"], "placement": "shared",
                                               "cpu_shares": shares, "vcpu_quota": quota})
    view = _placement.view_of(dest, [] if dest.guest(guest["name"]) else [guest])
    want = _placement.desired_state(view, guest, request)
    scheduler = {key: int(want[key]) for key in ("cpu_shares", "vcpu_quota") if want[key] is not None}
    return {"vcpu_pins": {str(i): format_cpulist(cpus) for i, cpus in enumerate(want["vcpu_pins"])},
            "emulator_pin": format_cpulist(want["emulator"]), "iothreads": format_cpulist(want["iothreads"]),
            "scheduler": scheduler}


def placement_changes(current, desired):
    """{what: (before, after)} for every part of the placement that differs."""
    changes = {}
    for vcpu, cpus in sorted(desired["vcpu_pins"].items(), key=lambda kv: int(kv[0])):
        have = current.get("vcpu_pins", {}).get(vcpu)
        if have is None or parse_cpulist(have) != parse_cpulist(cpus):
            changes["vcpu %s" % vcpu] = (have, cpus)
    have = current.get("emulator_pin")
    if have is None or parse_cpulist(have) != parse_cpulist(desired["emulator_pin"]):
        changes["emulator"] = (have, desired["emulator_pin"])
    for thread, cpus in sorted((current.get("iothread_pins") or {}).items()):
        if desired.get("iothreads") and parse_cpulist(cpus) != parse_cpulist(desired["iothreads"]):
            changes["iothread %s" % thread] = (cpus, desired["iothreads"])
    if current.get("scheduler") is None:
        return changes  # the node cannot have scheduler parameters; see scheduler_unsupported()
    for key, value in sorted(desired["scheduler"].items()):
        have = current["scheduler"].get(key)
        if have != value:
            changes[key] = (have, value)
    return changes


def scheduler_unsupported(current, desired):
    """A warning when scheduler parameters are wanted on a node that cannot have them, else None."""
    if current.get("scheduler") is None and desired["scheduler"]:
        return ("%s not applied: the destination has no cpu cgroup controller for libvirt, so it has no "
                "scheduler parameters" % ", ".join(sorted(desired["scheduler"])))
    return None


def placement_from_metadata(metadata, cpu_shares=None, vcpu_quota=None):
    """cpu_shares and vcpu_quota: the options win, else the guest's hpcvirt placement element."""
    element = (metadata or {}).get("placement", {})

    def pick(option, key):
        if option is not None:
            return option
        try:
            return int(element[key]) if element.get(key) not in (None, "") else None
        except ValueError:
            return None

    return pick(cpu_shares, "cpu_shares"), pick(vcpu_quota, "vcpu_quota")


def should_start_postcopy(stats, elapsed_ms, after_iterations, after_ms):
    """Switch a running pre-copy migration to post-copy when it does not converge.

    Not converging: more than ``after_iterations`` passes over memory, or longer than ``after_ms``.
    Only once the job is past setup (some memory sent).
    """
    if not stats or stats.get("memory_processed", 0) <= 0:
        return False
    if after_iterations and stats.get("memory_iteration", 0) > after_iterations:
        return True
    return bool(after_ms) and elapsed_ms >= after_ms


def normalise_job_stats(raw):
    """libvirt's completed job statistics as stable keys in ms and bytes (None when not reported)."""
    raw = raw or {}

    def get(key):
        value = raw.get(key)
        return int(value) if value is not None else None

    return {
        "downtime_ms": get("downtime"),
        "downtime_net_ms": get("downtime_net"),
        "total_ms": get("time_elapsed"),
        "setup_ms": get("setup_time"),
        "data_total_bytes": get("data_total"),
        "data_transferred_bytes": get("data_processed"),
        "memory_transferred_bytes": get("memory_processed"),
        "memory_bps": get("memory_bps"),
        "memory_iterations": get("memory_iteration"),
        "memory_dirty_rate_pps": get("memory_dirty_rate"),
        "postcopy_requests": get("memory_postcopy_requests"),
        "disk_total_bytes": get("disk_total"),
        "disk_transferred_bytes": get("disk_processed"),
        "auto_converge_throttle": get("auto_converge_throttle"),
    }


def choose_destinations(guests, nodes, strategy="spread", reserve_memory_mb=0, vcpu_overcommit=0.0):
    """Where each guest of an evacuation goes.

    ``guests``: list of dicts name, memory_kb, vcpus (largest placed first, so that what fits
    least is not left for last). ``nodes``: list of dicts name, free_memory_kb, pool (set),
    active_vcpus. ``spread`` puts each guest on the node with the most free memory left,
    ``pack`` on the node with the least that still fits (filling nodes one by one).
    Returns ({guest: node}, [guests that fit nowhere]); a guest that fits nowhere is to be
    preempted. The node figures are updated as guests are placed, so the plan holds as a whole.
    """
    if strategy not in STRATEGIES:
        raise ValueError("strategy must be one of %s, not %r" % (", ".join(STRATEGIES), strategy))
    state = {n["name"]: {"free_memory_kb": n["free_memory_kb"], "pool": frozenset(n["pool"]),
                         "active_vcpus": n.get("active_vcpus", 0), "free_hugepages": {}} for n in nodes}
    order = sorted(guests, key=lambda g: (-g["memory_kb"], -g["vcpus"], g["name"]))
    placed, homeless = {}, []
    for guest in order:
        need = {"memory_kb": guest["memory_kb"], "vcpus": guest["vcpus"], "hugepages_kb": None}
        fitting = [name for name in sorted(state)
                   if not check_capacity(need, state[name], reserve_memory_mb, vcpu_overcommit)]
        if not fitting:
            homeless.append(guest["name"])
            continue

        def load(name):
            node = state[name]
            return (node["active_vcpus"] / float(max(len(node["pool"]), 1)), -node["free_memory_kb"])

        if strategy == "spread":
            chosen = min(fitting, key=lambda n: (-state[n]["free_memory_kb"], load(n), n))
        else:
            chosen = min(fitting, key=lambda n: (state[n]["free_memory_kb"], n))
        placed[guest["name"]] = chosen
        state[chosen]["free_memory_kb"] -= guest["memory_kb"]
        state[chosen]["active_vcpus"] += guest["vcpus"]
    return placed, sorted(homeless)


def guest_needs_from_xml(xml_text):
    """Memory (KiB), vCPUs and hugepages a guest needs, from its domain XML."""
    root = ElementTree.fromstring(xml_text)
    memory = root.find("memory")
    unit = memory.get("unit", "KiB") if memory is not None else "KiB"
    memory_kb = _to_kib(int(memory.text), unit) if memory is not None else 0
    vcpu = root.find("vcpu")
    maximum = int(vcpu.text) if vcpu is not None else 1
    current = int(vcpu.get("current", maximum)) if vcpu is not None else 1
    page = root.find("memoryBacking/hugepages/page")
    hugepages_kb = None
    if root.find("memoryBacking/hugepages") is not None:
        hugepages_kb = _to_kib(int(page.get("size")), page.get("unit", "KiB")) if page is not None else 2048
    return {
        "memory_kb": memory_kb,
        "vcpus": current,
        "vcpus_max": maximum,
        "hugepages_kb": hugepages_kb,
        "hugepages": (memory_kb // hugepages_kb) if hugepages_kb else 0,
        "writable_disks": [
            disk.find("target").get("dev") for disk in root.findall("devices/disk")
            if disk.get("device", "disk") == "disk" and disk.find("readonly") is None
            and disk.find("target") is not None and disk.find("source") is not None
        ],
    }


def _to_kib(value, unit):
    """A libvirt size with its unit in KiB (libvirt's units, as the domain XML model reads them)."""
    return int(round(value * LIBVIRT_UNITS.get((unit or "KiB").lower(), 1)))


# --------------------------------------------------------------------------------- libvirt


def host_uuid(conn):
    """The host UUID in libvirt's capabilities (migration refuses equal source and destination UUIDs)."""
    return ElementTree.fromstring(conn.getCapabilities()).findtext("host/uuid")


def read_placement(libvirt, dom):
    """vCPU pins, emulator pin and scheduler parameters of a running domain (live where possible)."""
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    pins = dom.vcpuPinInfo(live)
    current = {
        "vcpu_pins": {str(i): format_cpulist(cpumap_to_set(m)) for i, m in enumerate(pins)},
        "emulator_pin": format_cpulist(cpumap_to_set(dom.emulatorPinInfo(live))),
    }
    try:
        current["iothread_pins"] = {str(info[0]): format_cpulist(cpumap_to_set(info[1]))
                                    for info in dom.ioThreadInfo(live)}
    except libvirt.libvirtError:
        current["iothread_pins"] = {}
    try:
        current["scheduler"] = dom.schedulerParametersFlags(live)
    except libvirt.libvirtError:
        # A node without the cpu cgroup controller (the namespaced test-bed nodes, or a host
        # where libvirt may not use cgroups) has no scheduler parameters at all, live or
        # persistent: libvirt refuses both.
        current["scheduler"] = None
    return current


def apply_placement(libvirt, dom, desired, changes):
    """Apply the placement ``changes`` to the running domain, live and persistent."""
    nr_cpus = dom.connect().getCPUMap()[0]
    persistent = bool(dom.isPersistent())
    both = libvirt.VIR_DOMAIN_AFFECT_LIVE | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if persistent else 0)
    online_vcpus = dom.info()[3]
    for what in changes:
        if what.startswith("vcpu "):
            vcpu = int(what.split()[1])
            cpumap = set_to_cpumap(parse_cpulist(desired["vcpu_pins"][str(vcpu)]), nr_cpus)
            # vCPUs above the current count exist only in the definition.
            flags = both if vcpu < online_vcpus else libvirt.VIR_DOMAIN_AFFECT_CONFIG
            dom.pinVcpuFlags(vcpu, cpumap, flags)
        elif what == "emulator":
            dom.pinEmulator(set_to_cpumap(parse_cpulist(desired["emulator_pin"]), nr_cpus), both)
        elif what.startswith("iothread "):
            dom.pinIOThread(int(what.split()[1]), set_to_cpumap(parse_cpulist(desired["iothreads"]), nr_cpus), both)
    scheduler = {k: v for k, v in desired["scheduler"].items() if k in changes}
    if scheduler:
        # One call per definition: the Python binding reads the parameter types first, and that
        # read takes LIVE or CONFIG, not both.
        dom.setSchedulerParametersFlags(scheduler, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if persistent:
            dom.setSchedulerParametersFlags(scheduler, libvirt.VIR_DOMAIN_AFFECT_CONFIG)


def flags_value(libvirt, names):
    value = 0
    for name in names:
        value |= getattr(libvirt, name)
    return value


class JobWatcher(threading.Thread):
    """Follows the source's migration job; switches to post-copy or aborts when told to."""

    def __init__(self, libvirt, dom, postcopy=False, after_iterations=0, after_ms=0, timeout_ms=0,
                 poll_s=0.1):
        super().__init__(daemon=True)
        self.libvirt = libvirt
        self.dom = dom
        self.postcopy = postcopy
        self.after_iterations = after_iterations
        self.after_ms = after_ms
        self.timeout_ms = timeout_ms
        self.poll_s = poll_s
        self.started_postcopy = False
        self.aborted = False
        self.last_stats = {}
        self.max_iteration = 0
        self._done = threading.Event()
        self._start = time.monotonic()

    def stop(self):
        self._done.set()
        self.join(timeout=5)

    def run(self):
        while not self._done.wait(self.poll_s):
            elapsed_ms = (time.monotonic() - self._start) * 1000.0
            try:
                stats = self.dom.jobStats(0)
            except self.libvirt.libvirtError:
                continue
            if stats.get("type", 0) == 0:  # no job (yet, or any more)
                continue
            self.last_stats = stats
            self.max_iteration = max(self.max_iteration, stats.get("memory_iteration", 0))
            try:
                if self.postcopy and not self.started_postcopy and should_start_postcopy(
                        stats, elapsed_ms, self.after_iterations, self.after_ms):
                    self.dom.migrateStartPostCopy(0)
                    self.started_postcopy = True
                elif self.timeout_ms and elapsed_ms > self.timeout_ms and not self.started_postcopy \
                        and not self.aborted:
                    self.dom.abortJob()
                    self.aborted = True
            except self.libvirt.libvirtError:
                pass  # the job ended between the poll and the call


def migrate_guest(libvirt, dom, dest_uri, flags, params, max_downtime_ms=None, postcopy=False,
                  postcopy_after_iterations=0, postcopy_after_ms=0, timeout_ms=0, recover_attempts=3,
                  recover_wait_s=2.0):
    """Run the migration; return what happened (post-copy started, recovered, attempts).

    Raises MigrationError with ``guest_on`` set to where the guest is after a failure.
    """
    if max_downtime_ms:
        dom.migrateSetMaxDowntime(int(max_downtime_ms), 0)
    watcher = JobWatcher(libvirt, dom, postcopy, postcopy_after_iterations, postcopy_after_ms, timeout_ms)
    watcher.start()
    outcome = {"postcopy_started": False, "postcopy_recovered": False, "attempts": 1}
    try:
        dom.migrateToURI3(dest_uri, params, flags)
    except libvirt.libvirtError as exc:
        watcher.stop()
        outcome["postcopy_started"] = watcher.started_postcopy
        message = exc.get_error_message() or str(exc)
        if watcher.aborted:
            message = "aborted after %d ms without converging (timeout): %s" % (timeout_ms, message)
        if not _in_failed_postcopy(libvirt, dom):
            raise MigrationError(message, guest_on=_where_after_failure(libvirt, dom), detail=outcome)
        # Post-copy failed: the guest's memory is split between the two nodes and neither runs
        # it. The only way forward is to resume the post-copy migration (libvirt >= 8.5).
        recovered, last = _recover_postcopy(libvirt, dom, dest_uri, params, flags, recover_attempts,
                                            recover_wait_s, outcome)
        if not recovered:
            raise MigrationError("post-copy failed and could not be recovered (%s; then %s): the guest is "
                                 "paused in post-copy-failed state on both nodes; re-run the module to "
                                 "resume it" % (message, last), guest_on="postcopy_failed", detail=outcome)
        outcome["postcopy_recovered"] = True
    else:
        watcher.stop()
        outcome["postcopy_started"] = watcher.started_postcopy
    outcome["max_iteration_seen"] = watcher.max_iteration
    return outcome


def _in_failed_postcopy(libvirt, dom):
    try:
        state, reason = dom.state()
    except libvirt.libvirtError:
        return False
    failed = getattr(libvirt, "VIR_DOMAIN_PAUSED_POSTCOPY_FAILED", None)
    return state == libvirt.VIR_DOMAIN_PAUSED and failed is not None and reason == failed


def resume_postcopy(libvirt, dom, dest_uri, params, flags):
    """One attempt at resuming a failed post-copy migration."""
    dom.migrateToURI3(dest_uri, params, flags | libvirt.VIR_MIGRATE_POSTCOPY_RESUME)


def _recover_postcopy(libvirt, dom, dest_uri, params, flags, attempts, wait_s, outcome):
    last = "no attempt"
    if not hasattr(libvirt, "VIR_MIGRATE_POSTCOPY_RESUME"):
        return False, "this libvirt has no post-copy recovery (VIR_MIGRATE_POSTCOPY_RESUME, libvirt >= 8.5)"
    for attempt in range(attempts):
        outcome["attempts"] += 1
        time.sleep(wait_s)
        try:
            resume_postcopy(libvirt, dom, dest_uri, params, flags)
            return True, None
        except libvirt.libvirtError as exc:
            last = exc.get_error_message() or str(exc)
    return False, last


def _where_after_failure(libvirt, dom):
    """After a failed pre-copy migration libvirt resumes the guest on the source; make sure."""
    try:
        if not dom.isActive():
            return "nowhere"
        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            dom.resume()
        return "source"
    except libvirt.libvirtError:
        return "unknown"


# --------------------------------------------------------------------------------- the migrate module

PLACEMENT_FIELDS = ("cpu_shares", "vcpu_quota")
_NON_NEGATIVE = ("bandwidth", "bandwidth_postcopy", "max_downtime_ms", "postcopy_after_iterations",
                 "postcopy_after_ms", "postcopy_recover_attempts", "timeout", "reserve_memory_mb")
_GUEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
# Where a failed migration left the guest, in words.
_WHERE = {"source": "it is still running on the source %s",
          "postcopy_failed": "it is paused in a failed post-copy on both nodes",
          "nowhere": "it is no longer running on the source",
          "unknown": "its state on the source could not be read"}


class MigrationRequestError(MigrationError):
    """The module's options are wrong; nothing was read or changed."""


def validate(params):
    """Refuse bad options, naming the option and why."""
    if not _GUEST_NAME.fullmatch(params["name"] or ""):
        raise MigrationRequestError("name: %r is not a guest name (letters, digits, '_.+-', at most 128)"
                                    % params["name"])
    for key in _NON_NEGATIVE:
        if params[key] < 0:
            raise MigrationRequestError("%s: must be 0 or more, not %d" % (key, params[key]))
    if params["vcpu_overcommit"] < 0:
        raise MigrationRequestError("vcpu_overcommit: must be 0 (no limit) or more, not %g" % params["vcpu_overcommit"])
    if params["dest_pool"] is not None:
        try:
            parse_cpulist(params["dest_pool"])
        except ValueError as exc:
            raise MigrationRequestError("dest_pool: %s" % exc)
    if params["disks"] == "shared" and (params["copy_disks"] or params["disks_uri"]):
        raise MigrationRequestError("copy_disks/disks_uri: only with disks=copy or disks=copy_incremental")
    if params["migrate_uri"] and params["socket_dir"]:
        raise MigrationRequestError("migrate_uri/socket_dir: give one of them, not both")
    try:
        _placement.normalise_request(0, {"name": params["name"], "placement": "shared",
                                         "cpu_shares": params["cpu_shares"], "vcpu_quota": params["vcpu_quota"]})
    except _placement.PlacementError as exc:
        raise MigrationRequestError(str(exc).replace("guests[0].", "", 1))


def remote_node(libvirt, conn, pool=None, timings=None):
    """The destination as a ``NodeState``, from what its libvirtd reports (its own sysfs and cgroups
    are not readable from the source): pool ``pool`` (the destination's node_info ``layout.pool``),
    else every online CPU, which is the pool and housekeeping of a node never carved."""
    online = cpumap_to_set(conn.getCPUMap()[1])
    pool_cpus = (parse_cpulist(pool) & online) if pool is not None else online
    layout = {"housekeeping": format_cpulist(online) if pool is None else "", "pool": format_cpulist(pool_cpus),
              "partitions": [], "unassigned": "", "source": "option" if pool is not None else "online_cpus"}
    node = NodeState(None, None, None, layout, {"name": None, "source": "unknown", "recorded_at": None},
                     conn=conn, ncpus=conn.getCPUMap()[0], timings=timings)
    node.read_guests(libvirt)
    return node


def read_nodes(libvirt, source_conn, dest_conn, params, timings):
    """Both nodes, read once: (source NodeState, destination NodeState, facts of the two daemons)."""
    source = NodeState.read(conn=source_conn, libvirt=libvirt, timings=timings)
    with timings.measure("read"):
        dest = remote_node(libvirt, dest_conn, params["dest_pool"], timings)
        free_hugepages = {}
        try:
            for size_kb in (2048, 1048576):
                cells = dest_conn.getFreePages([size_kb], -1, 1, 0) or {}
                free_hugepages[size_kb] = sum(cell.get(size_kb, 0) for cell in cells.values())
        except libvirt.libvirtError:
            pass
        facts = {
            "source": {"uri": source_conn.getURI(), "hostname": source_conn.getHostname(),
                       "host_uuid": host_uuid(source_conn)},
            "destination": {"uri": dest_conn.getURI(), "hostname": dest_conn.getHostname(),
                            "host_uuid": host_uuid(dest_conn), "free_memory_kb": dest_conn.getFreeMemory() // 1024,
                            "free_hugepages": free_hugepages},
            "need": None,
        }
        dom = source.domains.get(params["name"])
        if dom is not None:
            facts["need"] = guest_needs_from_xml(dom.XMLDesc(0))
    return source, dest, facts


def capacity_of(dest, facts):
    """What ``check_capacity`` needs of the destination."""
    return {"free_memory_kb": facts["destination"]["free_memory_kb"], "pool": dest.pool,
            "free_hugepages": facts["destination"]["free_hugepages"],
            "active_vcpus": sum(g["vcpus"]["current"] for g in dest.guests if g.get("active"))}


def guest_view(guest):
    """What ``--diff`` shows of a guest on one node: None when it is not there."""
    if guest is None:
        return None
    scheduler = {k: guest["scheduler"][k] for k in PLACEMENT_FIELDS if k in (guest.get("scheduler") or {})}
    return {"state": guest["state"], "persistent": guest["persistent"],
            "placement": {"vcpu_pins": dict(guest["vcpu_pins"]), "emulator_pin": guest["emulator_pin"],
                          "scheduler": scheduler}}


def _current_placement(guest):
    return {"vcpu_pins": dict(guest["vcpu_pins"]), "emulator_pin": guest["emulator_pin"],
            "iothread_pins": dict(guest.get("iothread_pins") or {}), "scheduler": guest.get("scheduler") or None}


def migration_record(metadata, facts):
    """hpcvirt ``migration`` element: last hop, and the guest's home (kept from the first hop)."""
    previous = metadata.get("migration", {})
    source, dest = facts["source"], facts["destination"]
    return {"from_host": source["hostname"], "from_uri": source["uri"], "to_host": dest["hostname"],
            "to_uri": dest["uri"], "at": now_iso(),
            "home_host": previous.get("home_host") or source["hostname"],
            "home_uri": previous.get("home_uri") or source["uri"]}


def metadata_after_move(metadata, facts, desired, moving=True):
    """The guest's hpcvirt metadata on the destination: the hop recorded (unless it already names
    the destination and the guest is not moving now), and the shared placement when applied (its
    scheduler parameters too, so that the next hop applies them again)."""
    data = dict(metadata)
    if moving or (metadata.get("migration") or {}).get("to_host") != facts["destination"]["hostname"]:
        data["migration"] = migration_record(metadata, facts)
    if desired:
        placement = dict(data.get("placement", {}))
        placement["mode"] = "shared"
        placement.pop("partition", None)
        placement.update({key: str(value) for key, value in desired["scheduler"].items()})
        data["placement"] = placement
    return data


def _plan_arrival(plan, report, guest, facts, desired, moving, placement_of):
    """PLACE (when the placement differs) and RECORD (when the metadata does) on the destination."""
    name = report["name"]
    if desired is not None:
        current = placement_of
        changes = placement_changes(current, desired) if current is not None else {"all": (None, desired)}
        report["placement"]["changes"] = {k: list(v) for k, v in changes.items() if k != "all"}
        if current is not None:
            note = scheduler_unsupported(current, desired)
            if note:
                report["warnings"].append(note)
        if changes:
            plan.add(PLACE, name, before=current, after=desired, node=facts["destination"]["hostname"])
    metadata = guest.get("hpcvirt") or {}
    wanted = metadata_after_move(metadata, facts, desired, moving)
    if wanted != metadata:
        plan.add(RECORD, name, before={k: metadata.get(k) for k in ("migration", "placement")},
                 after={k: wanted.get(k) for k in ("migration", "placement")}, metadata=wanted,
                 node=facts["destination"]["hostname"])


def plan_migration(source, dest, facts, params):
    """(plan, report) of moving ``params['name']`` from ``source`` to ``dest`` (NodeStates).

    Raises MigrationError (nothing changed) when it cannot be done: the guest is nowhere or twice,
    the destination is the source, or it cannot take the guest.
    """
    name = params["name"]
    here, there = source.guest(name), dest.guest(name)
    report = {"name": name, "action": None, "capacity_problems": [], "placement": {}, "warnings": [],
              "source": {k: facts["source"][k] for k in ("uri", "hostname")},
              "destination": {"uri": facts["destination"]["uri"], "hostname": facts["destination"]["hostname"],
                              "free_memory_mb": facts["destination"]["free_memory_kb"] // 1024,
                              "pool": dest.layout["pool"], "pool_source": dest.layout["source"],
                              "active_vcpus": capacity_of(dest, facts)["active_vcpus"]}}
    if facts["source"]["host_uuid"] == facts["destination"]["host_uuid"]:
        raise MigrationError("dest_uri: '%s' is the source node itself (same libvirt host UUID)" % params["dest_uri"],
                             **report)
    try:
        action = locate(here, there)
    except MigrationError as exc:
        exc.details.update(report)
        raise
    report["action"] = action
    shared = params["placement"] == "shared"
    report["before"] = {"source": guest_view(here), "destination": guest_view(there)}
    plan = Plan()
    if action in ("migrate", "migrate_offline"):
        need = facts["need"]
        report["need"] = {k: v for k, v in need.items() if k != "writable_disks"}
        if action == "migrate":
            problems = check_capacity(need, capacity_of(dest, facts), params["reserve_memory_mb"],
                                      params["vcpu_overcommit"])
            report["capacity_problems"] = problems
            if problems:
                raise MigrationError("dest_uri: %s (%s) cannot take guest '%s': %s; nothing was moved"
                                     % (facts["destination"]["hostname"], params["dest_uri"], name,
                                        "; ".join(problems)), **report)
        elif params["disks"] != "shared":
            raise MigrationError("disks: a shut-off guest is moved offline (its definition only); its disks must "
                                 "be shared, not '%s'" % params["disks"], **report)
        flag_names = migration_flag_names(action, params["disks"], params["unsafe"], params["auto_converge"],
                                          params["postcopy"], persistent_source=here["persistent"])
        report["flags"] = flag_names
        plan.add(MIGRATE, name, before={"node": facts["source"]["hostname"], "state": here["state"]},
                 after={"node": facts["destination"]["hostname"], "state": here["state"]},
                 offline=action == "migrate_offline", flags=flag_names,
                 params=migration_params(name, params["migrate_uri"], params["socket_dir"], params["bandwidth"],
                                         params["bandwidth_postcopy"], params["disks"],
                                         params["copy_disks"] or need["writable_disks"], params["disks_uri"]))
        desired = desired_placement(dest, here, params["cpu_shares"], params["vcpu_quota"]) \
            if shared and action == "migrate" else None
        report["placement"] = {"desired": desired, "changes": {}}
        _plan_arrival(plan, report, here, facts, desired, True, None)
        arrived = dict(guest_view(here), persistent=True)
    else:
        if action == "finish":
            plan.add(UNDEFINE_SOURCE, name, before={"node": facts["source"]["hostname"], "state": here["state"]},
                     after=None)
        desired = desired_placement(dest, there, params["cpu_shares"], params["vcpu_quota"]) if shared else None
        report["placement"] = {"desired": desired, "changes": {}}
        _plan_arrival(plan, report, there, facts, desired, False, _current_placement(there))
        arrived = guest_view(there)
    if desired is not None:
        arrived["placement"] = {"vcpu_pins": dict(desired["vcpu_pins"]), "emulator_pin": desired["emulator_pin"],
                                "scheduler": dict(arrived["placement"]["scheduler"], **desired["scheduler"])}
    report["after"] = {"source": None, "destination": arrived}
    return plan, report


# -- actions: ``run(ctx, step)``; ctx holds libvirt, source_conn, dest_conn, params, out (result fields)


def _run_migrate(ctx, step):
    libvirt, params = ctx.libvirt, ctx.params
    dom = ctx.source_conn.lookupByName(step.target)
    ctx.out["window"] = {"start": time.time()}
    try:
        outcome = migrate_guest(
            libvirt, dom, params["dest_uri"], flags_value(libvirt, step.detail["flags"]), step.detail["params"],
            max_downtime_ms=0 if step.detail["offline"] else params["max_downtime_ms"], postcopy=params["postcopy"],
            postcopy_after_iterations=params["postcopy_after_iterations"],
            postcopy_after_ms=params["postcopy_after_ms"], timeout_ms=params["timeout"] * 1000,
            recover_attempts=params["postcopy_recover_attempts"])
    except MigrationError as exc:
        ctx.out["window"]["end"] = time.time()
        where = _WHERE["source"] % step.before["node"] if exc.guest_on == "source" \
            else _WHERE.get(exc.guest_on, "it is on %s" % exc.guest_on)
        raise MigrationError("migrating '%s' to %s failed: %s; %s" % (step.target, params["dest_uri"], exc, where),
                             guest_on=exc.guest_on, postcopy=exc.detail, window=ctx.out["window"],
                             changed=exc.guest_on != "source")
    ctx.out["window"]["end"] = time.time()
    ctx.out["postcopy"] = outcome
    if not step.detail["offline"]:
        raw = ctx.dest_conn.lookupByName(step.target).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        ctx.out["stats_raw"] = raw
        ctx.out["stats"] = normalise_job_stats(raw)
    return outcome


def _run_undefine_source(ctx, step):
    ctx.source_conn.lookupByName(step.target).undefineFlags(ctx.libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def _run_place(ctx, step):
    """Pin the arrived guest as desired: the changes from its live placement now (idempotent)."""
    dom = ctx.dest_conn.lookupByName(step.target)
    current = read_placement(ctx.libvirt, dom)
    changes = placement_changes(current, step.after)
    apply_placement(ctx.libvirt, dom, step.after, changes)
    note = scheduler_unsupported(current, step.after)
    if note and note not in ctx.out["warnings"]:
        ctx.out["warnings"].append(note)
    ctx.out["placement_changes"] = {k: list(v) for k, v in changes.items()}
    return ctx.out["placement_changes"]


def _run_record(ctx, step):
    dom = ctx.dest_conn.lookupByName(step.target)
    flags = (ctx.libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0) \
        | (ctx.libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
    write_domain_metadata(dom, step.detail["metadata"], flags)
    ctx.out["metadata"] = step.detail["metadata"]


MIGRATE = Action("migrate", _run_migrate, phase="migrate")
UNDEFINE_SOURCE = Action("undefine_source", _run_undefine_source, phase="undefine_source")
PLACE = Action("place", _run_place, phase="place")
RECORD = Action("record", _run_record, phase="record")


def converge(libvirt, source_conn, dest_conn, params, check_mode, timings):
    """The migrate module: validate, read both nodes, plan, execute; the result to return."""
    validate(params)
    source, dest, facts = read_nodes(libvirt, source_conn, dest_conn, params, timings)
    plan, report = plan_migration(source, dest, facts, params)
    result = dict(report, changed=plan.changed, plan=plan.to_list(),
                  diff={"before": report.pop("before"), "after": report.pop("after"),
                        "before_header": "guest %s" % params["name"], "after_header": "guest %s" % params["name"]})
    result.pop("before", None)
    result.pop("after", None)
    ctx = Context(libvirt=libvirt, source_conn=source_conn, dest_conn=dest_conn, params=params,
                  out={"warnings": result["warnings"]})
    try:
        execute(plan, ctx, check_mode, timings)
    except StepFailed as exc:
        details = {k: v for k, v in result.items() if k not in ("diff", "changed", "plan")}
        details.update(getattr(exc.error, "details", None) or {})
        exc.error.details = details
        raise
    finally:
        out = dict(ctx.out)
        changes = out.pop("placement_changes", None)
        if changes is not None:
            result["placement"]["changes"] = changes
        result.update(out)
    result["plan"] = plan.to_list()
    return result


# --------------------------------------------------------------------------------- evacuation plans
# Pure functions over what hpcvirt.regime.node_info returned on each node (one result per
# inventory host), so that a whole evacuation or restore is planned once, on the controller.


class PlanInputError(HpcvirtError, ValueError):
    """An option of the evacuation or restore planning is wrong; the message names it."""


def compile_pattern(pattern, option="pattern"):
    """The compiled regular expression of ``option`` (None for empty); a bad one names the option."""
    if not pattern:
        return None
    if not isinstance(pattern, str):
        raise PlanInputError("%s: must be a string (a regular expression), not %s" % (option, type(pattern).__name__))
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PlanInputError("%s: %r is not a valid regular expression: %s" % (option, pattern, exc))


def number_arg(value, option, kind=int):
    """``kind(value)`` of a filter option, naming the option when it is not a number."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise PlanInputError("%s: must be a number, not %r" % (option, value))


def _nodes_arg(value, option):
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise PlanInputError("%s: must be a dict of inventory host -> node_info result" % option)
    return value


def evacuation_candidates(domains, pattern=None, keep=()):
    """The time-shared guests of a node that an evacuation moves.

    Running (or paused) guests that are not placed dedicated (pinned into a partition) by what
    is observed nor by hpcvirt's intent, are not named in ``keep`` (for example the guests the
    coming regime change drops onto partitions), and whose name matches the regular expression
    ``pattern`` (searched; empty or None matches every name). Returns dicts name, memory_kb, vcpus.
    """
    matcher = compile_pattern(pattern) if not hasattr(pattern, "search") else pattern
    chosen = []
    for dom in domains:
        placement = dom.get("placement") or {}
        if not dom.get("active") or "dedicated" in (placement.get("observed"), placement.get("intent")):
            continue
        if dom["name"] in keep:
            continue
        if matcher is not None and not matcher.search(dom["name"]):
            continue
        chosen.append({"name": dom["name"], "memory_kb": int(dom.get("max_memory_kb") or dom["memory_kb"]),
                       "vcpus": int(dom["vcpus"]["current"])})
    return chosen


def node_capacity(name, node):
    """Free memory, pool CPUs and running vCPUs of a node_info result.

    Free memory is the free memory of the NUMA nodes, the figure libvirt's getFreeMemory gives and
    the migrate module checks on arrival, so a plan never promises what the migration refuses.
    """
    return {
        "name": name,
        "free_memory_kb": sum(int(cell["mem_free_kb"]) for cell in node["topology"]["numa_nodes"]),
        "pool": parse_cpulist(node["layout"]["pool"]),
        "active_vcpus": sum(int(d["vcpus"]["current"]) for d in node["domains"] if d.get("active")),
    }


def plan_evacuation(sources, destinations, strategy="spread", reserve_memory_mb=0, vcpu_overcommit=0.0,
                    pattern=None, keep=None):
    """Where every time-shared guest of the ``sources`` goes.

    ``sources``/``destinations``: {inventory host: node_info result}; a host in both is a source
    only (a node being evacuated takes no guests). Returns a dict: ``moves`` (name, from, to, pool
    of the destination, memory_kb, vcpus), ``preempt`` (name, from: the guests that fit on no destination), ``stay``
    (name, from: dedicated, kept or unmatched guests left in place) and ``destinations`` (capacity
    before the moves, free_memory_mb, pool, active_vcpus). ``keep``: {source host: guest names
    that stay where they are}.
    Raises ValueError for a guest name found on two sources (names must be unique to be moved).
    """
    _nodes_arg(sources, "_input")
    _nodes_arg(destinations, "destinations")
    if strategy not in STRATEGIES:
        raise PlanInputError("strategy: must be one of %s, not %r" % (", ".join(STRATEGIES), strategy))
    if reserve_memory_mb < 0 or vcpu_overcommit < 0:
        raise PlanInputError("reserve_memory_mb/vcpu_overcommit: must be 0 or more")
    if keep is not None and not isinstance(keep, dict):
        raise PlanInputError("keep: must be a dict of inventory host -> guest names")
    pattern = compile_pattern(pattern)
    guests, origin, stay = [], {}, []
    for host in sorted(sources):
        moving = evacuation_candidates(sources[host]["domains"], pattern, (keep or {}).get(host) or ())
        names = set(g["name"] for g in moving)
        for guest in moving:
            if guest["name"] in origin:
                raise PlanInputError("_input: guest %s is running on both %s and %s (names must be unique to be "
                                     "moved)" % (guest["name"], origin[guest["name"]], host))
            origin[guest["name"]] = host
            guests.append(guest)
        stay.extend({"name": d["name"], "from": host} for d in sources[host]["domains"]
                    if d.get("active") and d["name"] not in names)
    nodes = [node_capacity(host, destinations[host]) for host in sorted(destinations) if host not in sources]
    placed, homeless = choose_destinations(guests, nodes, strategy, reserve_memory_mb, vcpu_overcommit)
    by_name = {g["name"]: g for g in guests}
    moves = [{"name": name, "from": origin[name], "to": placed[name], "pool": destinations[placed[name]]["layout"]["pool"],
              "memory_kb": by_name[name]["memory_kb"], "vcpus": by_name[name]["vcpus"]} for name in sorted(placed)]
    return {
        "moves": moves,
        "preempt": [{"name": name, "from": origin[name]} for name in homeless],
        "stay": sorted(stay, key=lambda s: (s["from"], s["name"])),
        "destinations": {n["name"]: {"free_memory_mb": n["free_memory_kb"] // 1024, "pool": format_cpulist(n["pool"]),
                                     "active_vcpus": n["active_vcpus"]} for n in nodes},
    }


def plan_restore(nodes, homes, pattern=None):
    """What brings the guests of the ``homes`` back, from their own hpcvirt metadata only.

    ``nodes``: {inventory host: node_info result} of every node a guest may be on (the homes
    included); ``homes``: the hosts returning to time-shared. A guest whose ``migration`` element
    names a home (by libvirt host name) and that runs elsewhere moves home; a guest on a home that
    was preempted there (managed save image, ``checkpoint state=preempted``) is resumed.
    Returns ``moves`` (name, from, to, pool of the home) and ``resume`` (name, on).
    """
    _nodes_arg(nodes, "_input")
    matcher = compile_pattern(pattern)
    host_of = {nodes[host]["hostname"]: host for host in sorted(nodes)}
    moves, resume = [], []
    for host in sorted(nodes):
        for dom in nodes[host]["domains"]:
            if matcher is not None and not matcher.search(dom["name"]):
                continue
            meta = dom.get("hpcvirt") or {}
            home = host_of.get((meta.get("migration") or {}).get("home_host"))
            if dom.get("active") and home in homes and home != host:
                moves.append({"name": dom["name"], "from": host, "to": home, "pool": nodes[home]["layout"]["pool"]})
            elif host in homes and not dom.get("active") and dom.get("managed_save") \
                    and (meta.get("checkpoint") or {}).get("state") == "preempted":
                resume.append({"name": dom["name"], "on": host})
    return {"moves": sorted(moves, key=lambda m: m["name"]), "resume": sorted(resume, key=lambda r: r["name"])}
