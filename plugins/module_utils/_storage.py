# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Master images and per-instance overlays through libvirt's storage API.

Overlays live in a directory storage pool (by default the master image's own directory): one
pool per directory, reused when libvirt already has a pool on that path (libvirt refuses two
pools on one directory). An overlay is a qcow2 volume with the master as its backing store, so
hundreds of instances share one master image and each writes only its own changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct

from xml.etree import ElementTree

QCOW2_MAGIC = b"QFI\xfb"


def qcow2_virtual_size(path):
    """Virtual size in bytes from a qcow2 header; None when the file is not qcow2."""
    with open(path, "rb") as handle:
        header = handle.read(32)
    if len(header) < 32 or header[:4] != QCOW2_MAGIC:
        return None
    return struct.unpack(">Q", header[24:32])[0]


def image_size(path):
    """Virtual size of an image: the qcow2 header's, else the file's size (raw)."""
    return qcow2_virtual_size(path) or os.path.getsize(path)


def image_format(path):
    return "qcow2" if qcow2_virtual_size(path) is not None else "raw"


def pool_name_for(directory):
    """A pool name for a directory: hpcvirt-<basename>-<short hash of the path>."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(directory.rstrip("/")) or "root")
    return "hpcvirt-%s-%s" % (base, hashlib.sha256(directory.encode("utf-8")).hexdigest()[:6])


def overlay_name(domain, dev):
    return "%s-%s.qcow2" % (domain, dev)


def overlay_path(directory, domain, dev):
    return os.path.join(directory, overlay_name(domain, dev))


def pool_xml(name, directory):
    return "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, directory)


def overlay_xml(name, capacity_bytes, master, master_format):
    return ("<volume><name>%s</name><capacity unit='bytes'>%d</capacity>"
            "<target><format type='qcow2'/></target>"
            "<backingStore><path>%s</path><format type='%s'/></backingStore></volume>"
            % (name, capacity_bytes, master, master_format))


def _pool_path(pool):
    root = ElementTree.fromstring(pool.XMLDesc(0))
    return os.path.normpath(root.findtext("target/path") or "")


def find_pool_by_path(conn, directory):
    """The libvirt pool whose target is ``directory`` (active or not), or None."""
    directory = os.path.normpath(directory)
    for pool in conn.listAllStoragePools(0):
        try:
            if _pool_path(pool) == directory:
                return pool
        except Exception:  # a pool that vanished while listing
            continue
    return None


def find_pool(conn, directory, name=None):
    """The pool for ``directory``: by path first, then by the given name."""
    import libvirt

    pool = find_pool_by_path(conn, directory)
    if pool is None and name:
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            pool = None
    return pool


def ensure_pool(conn, directory, name=None):
    """Defined, active and refreshed pool for ``directory``; returns (pool, created: bool)."""
    pool = find_pool(conn, directory, name)
    created = False
    if pool is None:
        os.makedirs(directory, exist_ok=True)
        pool = conn.storagePoolDefineXML(pool_xml(name or pool_name_for(directory), directory), 0)
        created = True
    if not pool.isActive():
        pool.create(0)
    if not pool.autostart():
        pool.setAutostart(1)
    pool.refresh(0)
    return pool, created


def volume_exists(conn, path):
    import libvirt

    try:
        conn.storageVolLookupByPath(path)
        return True
    except libvirt.libvirtError:
        return os.path.exists(path)


def create_overlay(conn, directory, pool_name, domain, dev, master, size_bytes=None):
    """Create the overlay volume of ``dev`` for ``domain`` backed by ``master``; return its path."""
    pool, _created = ensure_pool(conn, directory, pool_name)
    return create_overlay_in_pool(pool, domain, dev, master, size_bytes)


def create_overlay_in_pool(pool, domain, dev, master, size_bytes=None):
    """``create_overlay`` in a pool the caller has ensured already (a fleet creates hundreds in one
    pool: ensuring and refreshing the pool once, not per volume, is most of the saving)."""
    capacity = max(size_bytes or 0, image_size(master))
    vol = pool.createXML(overlay_xml(overlay_name(domain, dev), capacity, master, image_format(master)), 0)
    return vol.path()


def qcow2_backing_file(path):
    """The backing file name recorded in a qcow2 header; None for no backing file or not qcow2."""
    with open(path, "rb") as handle:
        header = handle.read(20)
        if len(header) < 20 or header[:4] != QCOW2_MAGIC:
            return None
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset or not size:
            return None
        handle.seek(offset)
        return handle.read(size).decode("utf-8", "replace")


def delete_volume(conn, path):
    """Delete a volume by path through libvirt (refreshing its pool first); False when absent."""
    import libvirt

    directory = os.path.dirname(path)
    pool = find_pool_by_path(conn, directory)
    if pool is not None and pool.isActive():
        pool.refresh(0)
    try:
        vol = conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        if os.path.exists(path):
            os.unlink(path)   # not in any active pool: remove the file itself
            return True
        return False
    vol.delete(0)
    return True


def delete_volumes(conn, paths):
    """``delete_volume`` for many paths, refreshing each pool once; returns the paths deleted."""
    import libvirt

    for directory in sorted(set(os.path.dirname(path) for path in paths)):
        pool = find_pool_by_path(conn, directory)
        if pool is not None and pool.isActive():
            pool.refresh(0)
    deleted = []
    for path in paths:
        try:
            conn.storageVolLookupByPath(path).delete(0)
        except libvirt.libvirtError:
            if not os.path.exists(path):
                continue
            os.unlink(path)   # not in any active pool: remove the file itself
        deleted.append(path)
    return deleted
