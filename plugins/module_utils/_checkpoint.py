# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkpoints of a guest: preempt (managed save) and resume, and external snapshots with memory.

``plan_checkpoint`` is pure: from what the guest is now (``observe``) and the desired state it
returns the plan, typed steps of the actions ``PREEMPT``, ``RESUME``, ``SNAPSHOT``,
``DELETE_SNAPSHOT`` and ``REVERT``. ``_plan.execute`` carries them out with libvirt; each records
itself in the guest's hpcvirt ``checkpoint`` metadata (state, at, reason, snapshot), so a later
resume needs no outside state. ``converge`` is the whole checkpoint module.

Reverting an external snapshot is not in libvirt before 9.7 ("revert to external snapshot not
supported yet" on Debian 12's 9.0). ``revert_external`` does what libvirt 9.7 does for the simple
case (the snapshot is the current one and has no children): it discards the overlays written
since the snapshot (new empty overlays on the snapshot-time images) and restores the memory image
into them. On a libvirt that reverts external snapshots itself, that is used instead.
"""

from __future__ import annotations

import os
import re
from xml.etree import ElementTree

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._libvirt import find_domain
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan, Timings, execute
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import now_iso

STATES = ("preempted", "resumed", "present", "absent", "reverted")
SNAPSHOT_STATES = ("present", "absent", "reverted")
# A snapshot name becomes part of file names (GUEST.SNAPSHOT.mem): letters, digits, ._- only.
SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CheckpointError(HpcvirtError):
    pass


def check_snapshot_name(snapshot):
    if snapshot is not None and not SNAPSHOT_NAME.fullmatch(snapshot):
        raise CheckpointError("snapshot: %r is not a usable snapshot name (1 to 64 letters, digits, '.', '_' or "
                              "'-', starting with a letter or digit)" % snapshot)


def snapshot_files(directory, guest, snapshot, disks, memory=True):
    """Paths of an external snapshot's memory image and per-disk overlays."""
    files = {"memory": os.path.join(directory, "%s.%s.mem" % (guest, snapshot)) if memory else None,
             "disks": {dev: os.path.join(directory, "%s.%s.%s.qcow2" % (guest, snapshot, dev)) for dev in disks}}
    return files


def snapshot_xml(snapshot, files, description=None):
    """``domainsnapshot`` XML: every listed disk external; memory external or none."""
    root = ElementTree.Element("domainsnapshot")
    ElementTree.SubElement(root, "name").text = snapshot
    if description:
        ElementTree.SubElement(root, "description").text = description
    if files["memory"]:
        ElementTree.SubElement(root, "memory", snapshot="external", file=files["memory"])
    else:
        ElementTree.SubElement(root, "memory", snapshot="no")
    disks = ElementTree.SubElement(root, "disks")
    for dev, path in sorted(files["disks"].items()):
        disk = ElementTree.SubElement(disks, "disk", name=dev, snapshot="external")
        ElementTree.SubElement(disk, "source", file=path)
    return ElementTree.tostring(root, encoding="unicode")


def parse_snapshot_xml(xml_text):
    """Memory file, disk overlays ({dev: path}) and snapshot-time disk sources of a snapshot."""
    root = ElementTree.fromstring(xml_text)
    memory = root.find("memory")
    overlays = {}
    for disk in root.findall("disks/disk"):
        if disk.get("snapshot") == "external" and disk.find("source") is not None:
            overlays[disk.get("name")] = disk.find("source").get("file")
    originals = {}
    for disk in root.findall("domain/devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and source.get("file"):
            originals[target.get("dev")] = source.get("file")
    return {
        "name": root.findtext("name"),
        "state": root.findtext("state"),
        "memory": memory.get("file") if memory is not None and memory.get("snapshot") == "external" else None,
        "overlays": overlays,
        "originals": originals,
    }


def writable_disks(domain_xml):
    """{dev: source file} of the writable file disks of a domain."""
    root = ElementTree.fromstring(domain_xml)
    disks = {}
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        target, source = disk.find("target"), disk.find("source")
        if target is not None and source is not None and source.get("file"):
            disks[target.get("dev")] = source.get("file")
    return disks


def retarget_disks(domain_xml, sources):
    """Domain XML with the disks in ``sources`` ({dev: file}) pointing at those files, no backing chain."""
    root = ElementTree.fromstring(domain_xml)
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") not in sources:
            continue
        disk.find("source").set("file", sources[target.get("dev")])
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
    return ElementTree.tostring(root, encoding="unicode")


def plan_checkpoint(plan, guest, state, snapshot=None, force=False):
    """Add to ``plan`` the steps from ``guest`` (as ``observe`` returns it) to ``state``.

    A revert is done once: the ``checkpoint`` metadata records it, and reverting to the same
    snapshot again needs ``force`` (or any other checkpoint action in between).

    Raises CheckpointError when the state cannot be reached from here.
    """
    name = guest["name"]
    if state == "preempted":
        if guest["active"]:
            plan.add(PREEMPT, name, before=guest["state"], after="preempted (managed save)")
        elif not guest["managed_save"] and not guest["persistent"]:
            raise CheckpointError("name: a transient guest that is not running cannot be preempted")
    elif state == "resumed":
        if not guest["active"]:
            if not guest["managed_save"]:
                raise CheckpointError("name: '%s' is shut off and has no saved state to resume from; starting it "
                                      "would boot it afresh" % name)
            plan.add(RESUME, name, before="preempted (managed save)", after="running")
    elif state == "present":
        if snapshot not in guest["snapshots"]:
            plan.add(SNAPSHOT, "%s/%s" % (name, snapshot), before="absent", after="present", snapshot=snapshot)
    elif state == "absent":
        if snapshot in guest["snapshots"]:
            plan.add(DELETE_SNAPSHOT, "%s/%s" % (name, snapshot), before="present", after="absent",
                     snapshot=snapshot)
    elif state == "reverted":
        if snapshot not in guest["snapshots"]:
            raise CheckpointError("snapshot: '%s' has no snapshot '%s'" % (name, snapshot))
        done = guest["checkpoint"].get("state") == "reverted" and guest["checkpoint"].get("reverted_to") == snapshot
        if force or not done:
            plan.add(REVERT, "%s/%s" % (name, snapshot), before=guest["state"], after="snapshot %s" % snapshot,
                     snapshot=snapshot)
    return plan


_RECORDED_STATE = {"preempt": "preempted", "resume": "resumed", "snapshot": "snapshotted",
                   "delete_snapshot": "snapshot_deleted", "revert": "reverted"}


def checkpoint_record(previous, action, reason=None, snapshot=None):
    """The hpcvirt ``checkpoint`` element after ``action`` (an Action or its name)."""
    action = str(action)
    record = {"state": _RECORDED_STATE[action], "at": now_iso(), "reason": reason or previous.get("reason")}
    if action == "preempt":
        record["image"] = "managed_save"
    if snapshot:
        record["snapshot"] = snapshot
    if action == "revert":
        record["reverted_to"] = snapshot
    return {k: v for k, v in record.items() if v is not None}


def guest_state(guest):
    """What ``--diff`` shows of a guest: its state, saved image, snapshots and checkpoint record."""
    return {"state": guest["state"], "managed_save": guest["managed_save"], "snapshots": list(guest["snapshots"]),
            "checkpoint": (guest.get("checkpoint") or {}).get("state")}


def predict(guest, plan):
    """The guest's ``guest_state`` after ``plan`` (what check mode promises)."""
    after = guest_state(guest)
    for step in plan:
        snapshot = step.detail.get("snapshot")
        if step.action is PREEMPT:
            after.update(state="shutoff", managed_save=True)
        elif step.action is RESUME:
            after.update(state="running", managed_save=False)
        elif step.action is SNAPSHOT:
            after["snapshots"] = sorted(set(after["snapshots"]) | {snapshot})
        elif step.action is DELETE_SNAPSHOT:
            after["snapshots"] = [s for s in after["snapshots"] if s != snapshot]
        after["checkpoint"] = _RECORDED_STATE[step.action.name]
    return after


# --------------------------------------------------------------------------------- libvirt


def observe(libvirt, dom):
    state, _reason = dom.state()
    metadata = _read_metadata(dom)
    snapshots = sorted(s.getName() for s in dom.listAllSnapshots(0))
    checkpoint = metadata.get("checkpoint", {})
    return {
        "name": dom.name(),
        "active": bool(dom.isActive()),
        "persistent": bool(dom.isPersistent()),
        "managed_save": bool(dom.hasManagedSaveImage(0)),
        "state": {1: "running", 3: "paused", 5: "shutoff"}.get(state, str(state)),
        "snapshots": snapshots,
        "metadata": metadata,
        "checkpoint": checkpoint,
    }


def _read_metadata(dom):
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import read_domain_metadata

    return read_domain_metadata(dom)


def record(libvirt, dom, metadata, checkpoint):
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import write_domain_metadata

    data = dict(metadata)
    data["checkpoint"] = checkpoint
    flags = 0
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    if dom.isPersistent():
        flags |= libvirt.VIR_DOMAIN_AFFECT_CONFIG
    write_domain_metadata(dom, data, flags)
    return data


def create_snapshot(libvirt, dom, snapshot, directory, memory=True, live=False, description=None):
    active = bool(dom.isActive())
    disks = writable_disks(dom.XMLDesc(0))
    files = snapshot_files(directory, dom.name(), snapshot, disks, memory=memory and active)
    for path in [files["memory"]] + list(files["disks"].values()):
        if path and os.path.exists(path):
            raise CheckpointError("snapshot: %s exists already; remove it or choose another snapshot name" % path)
    flags = 0
    if not files["memory"]:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    if live and active and files["memory"]:
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
    dom.snapshotCreateXML(snapshot_xml(snapshot, files, description), flags)
    return files


def delete_snapshot(libvirt, dom, snapshot):
    """Delete a snapshot: libvirt merges its overlays back (9.0 does this for external snapshots);
    its memory image, which libvirt leaves behind, is removed here."""
    snap = dom.snapshotLookupByName(snapshot, 0)
    parsed = parse_snapshot_xml(snap.getXMLDesc(0))
    snap.delete(0)
    if parsed["memory"] and os.path.exists(parsed["memory"]):
        os.unlink(parsed["memory"])
    return parsed


def revert_snapshot(libvirt, conn, dom, snapshot):
    """Revert to ``snapshot``: libvirt's own revert where it can, else ``revert_external``."""
    snap = dom.snapshotLookupByName(snapshot, 0)
    try:
        dom.revertToSnapshot(snap, 0)
        return "libvirt"
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_CONFIG_UNSUPPORTED:
            raise
    revert_external(libvirt, conn, dom, snap)
    return "hpcvirt (libvirt < 9.7 cannot revert external snapshots)"


def revert_external(libvirt, conn, dom, snap):
    parsed = parse_snapshot_xml(snap.getXMLDesc(0))
    if snap.numChildren(0):
        raise CheckpointError("snapshot: '%s' has children; only a snapshot without children can be reverted "
                              "on this libvirt" % parsed["name"])
    if not parsed["memory"] or not os.path.exists(parsed["memory"]):
        raise CheckpointError("snapshot: '%s' has no memory image to revert to (disk-only snapshot)" % parsed["name"])
    current = writable_disks(dom.XMLDesc(0))
    for dev, overlay in parsed["overlays"].items():
        if current.get(dev) != overlay:
            raise CheckpointError("snapshot: disk %s of the guest is %s, not the snapshot's overlay %s; a later "
                                  "snapshot or block job changed the chain" % (dev, current.get(dev), overlay))
    image_xml = conn.saveImageGetXMLDesc(parsed["memory"], libvirt.VIR_DOMAIN_XML_SECURE)
    if dom.isActive():
        dom.destroy()
    for dev, overlay in parsed["overlays"].items():
        fresh_overlay(libvirt, conn, overlay, parsed["originals"][dev])
    restore_flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if parsed["state"] == "paused" else libvirt.VIR_DOMAIN_SAVE_RUNNING
    conn.restoreFlags(parsed["memory"], retarget_disks(image_xml, parsed["overlays"]), restore_flags)


def fresh_overlay(libvirt, conn, path, backing):
    """Replace ``path`` with an empty qcow2 overlay on ``backing`` (through a libvirt storage pool)."""
    directory, volname = os.path.split(path)
    pool, transient = _pool_for(libvirt, conn, directory)
    try:
        pool.refresh(0)
        old = pool.storageVolLookupByName(volname)
        capacity = old.info()[1]  # the overlay's virtual size, the same as the new one's
        old.delete(0)
        pool.createXML("<volume><name>%s</name><capacity unit='bytes'>%d</capacity><target><format type='qcow2'/>"
                       "</target><backingStore><path>%s</path><format type='qcow2'/></backingStore></volume>"
                       % (volname, capacity, backing), 0)
    finally:
        if transient:
            pool.destroy()


def _pool_for(libvirt, conn, directory):
    """An active dir pool over ``directory``: an existing one, or a transient one made for the call."""
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        target = ElementTree.fromstring(pool.XMLDesc(0)).findtext("target/path")
        if target and os.path.realpath(target) == os.path.realpath(directory):
            return pool, False
    name = "hpcvirt-ckpt-%d" % os.getpid()
    xml = "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, directory)
    return conn.storagePoolCreateXML(xml, 0), True


# --------------------------------------------------------------------------------- actions
# Each runs one step with ``ctx``: libvirt, conn, dom, metadata (the guest's hpcvirt metadata, kept
# up to date), reason, snapshot_dir, memory, live and ``out`` (result fields the step adds).


def _record(ctx, step):
    ctx.metadata = record(ctx.libvirt, ctx.dom, ctx.metadata,
                          checkpoint_record(ctx.metadata.get("checkpoint", {}), step.action, ctx.reason,
                                            step.detail.get("snapshot")))


def _run_preempt(ctx, step):
    # Recorded first, live and persistent: the saved image then carries it too.
    previous = ctx.metadata
    _record(ctx, step)
    try:
        ctx.dom.managedSave(0)
    except ctx.libvirt.libvirtError:
        ctx.metadata = record(ctx.libvirt, ctx.dom, previous, previous.get("checkpoint", {}))  # it still runs
        raise


def _run_resume(ctx, step):
    ctx.dom.create()
    _record(ctx, step)


def _run_snapshot(ctx, step):
    directory = ctx.snapshot_dir or default_snapshot_dir(ctx.dom)
    ctx.out["files"] = create_snapshot(ctx.libvirt, ctx.dom, step.detail["snapshot"], directory, ctx.memory,
                                       ctx.live, description=ctx.reason)
    _record(ctx, step)


def _run_delete_snapshot(ctx, step):
    parsed = delete_snapshot(ctx.libvirt, ctx.dom, step.detail["snapshot"])
    ctx.out["files"] = {"memory": parsed["memory"], "disks": parsed["overlays"]}
    _record(ctx, step)


def _run_revert(ctx, step):
    ctx.out["reverted_by"] = revert_snapshot(ctx.libvirt, ctx.conn, ctx.dom, step.detail["snapshot"])
    ctx.dom = ctx.conn.lookupByName(ctx.dom.name())
    _record(ctx, step)


PREEMPT = Action("preempt", _run_preempt)
RESUME = Action("resume", _run_resume)
SNAPSHOT = Action("snapshot", _run_snapshot)
DELETE_SNAPSHOT = Action("delete_snapshot", _run_delete_snapshot)
REVERT = Action("revert", _run_revert)


def default_snapshot_dir(dom):
    disks = writable_disks(dom.XMLDesc(0))
    if not disks:
        return "/var/lib/libvirt/qemu/snapshot"
    return os.path.dirname(disks[sorted(disks)[0]])


def public(guest):
    return {k: v for k, v in guest.items() if k != "metadata"}


def converge(libvirt, conn, params, check_mode=False):
    """The checkpoint module: plan from the guest as it is, execute, return the result."""
    name = params["name"]
    check_snapshot_name(params.get("snapshot"))
    dom = find_domain(conn, name)
    if dom is None:
        raise CheckpointError("name: no guest '%s' on %s" % (name, conn.getURI()))
    guest = observe(libvirt, dom)
    try:
        plan = plan_checkpoint(Plan(), guest, params["state"], params.get("snapshot"), params.get("force"))
    except CheckpointError as exc:
        exc.details.setdefault("guest", public(guest))
        raise
    timings = Timings()
    result = dict(changed=plan.changed, plan=plan.to_list(), checkpoint=guest["checkpoint"], guest=public(guest),
                  diff={"before": guest_state(guest), "after": predict(guest, plan),
                        "before_header": "guest %s" % name, "after_header": "guest %s" % name})
    ctx = Context(libvirt=libvirt, conn=conn, dom=dom, metadata=guest["metadata"], reason=params.get("reason"),
                  snapshot_dir=params.get("snapshot_dir"), memory=params.get("memory", True),
                  live=params.get("live", False), out={})
    try:
        execute(plan, ctx, check_mode, timings)
    except Exception as exc:
        details = getattr(getattr(exc, "error", exc), "details", None)
        if details is not None:
            details.setdefault("guest", public(guest))
        raise
    if plan and not check_mode:
        result.update(ctx.out)
        result["plan"] = plan.to_list()
        result["checkpoint"] = ctx.metadata.get("checkpoint", {})
        result["guest"] = public(observe(libvirt, conn.lookupByName(name)))
    result["timings"] = timings.to_dict()
    return result
