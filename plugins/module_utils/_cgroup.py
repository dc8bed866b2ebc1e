# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cgroup layout of a node and the cpuset controller in both versions.

A node mounts cgroups as pure v1, pure v2, or hybrid (v1 controllers beside a v2 tree that holds
none of them). What matters here is where the **cpuset** controller lives and which version it
speaks, and where libvirt puts its guests (the "machine" cgroup: ``machine.slice`` under systemd,
``machine`` without it). Partitions are cgroups below the machine cgroup named
``hpcvirt-<name>.partition`` so that a guest pinned into one is allowed by its parent.

``CgroupLayout.problems`` says, from what the kernel reads back, why a node's layout cannot be
used (no cpuset controller, cpuset not enabled down to the machine cgroup, a partition the kernel
reads back invalid); the planners refuse such a node before they change anything.

Everything reads below a root path so unit tests use recorded trees.
"""

from __future__ import annotations

import os

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_text

PARTITION_PREFIX = "hpcvirt-"
PARTITION_SUFFIX = ".partition"


def partition_cgroup_name(name):
    return PARTITION_PREFIX + name + PARTITION_SUFFIX


def partition_name_of(dirname):
    """The partition name a cgroup directory stands for, or None for any other cgroup."""
    if dirname.startswith(PARTITION_PREFIX) and dirname.endswith(PARTITION_SUFFIX):
        name = dirname[len(PARTITION_PREFIX):-len(PARTITION_SUFFIX)]
        return name or None
    return None


class CgroupError(Exception):
    pass


def _unescape_mount_path(path):
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def parse_mountinfo(text):
    """Cgroup mounts from /proc/self/mountinfo: list of (mountpoint, fstype, super options)."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        fields = left.split()
        tail = right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype = tail[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append((_unescape_mount_path(fields[4]), fstype, tail[2].split(",")))
    return mounts


class Cgroup:
    """One cgroup directory's cpuset view, in either version."""

    def __init__(self, path, version):
        self.path = path
        self.version = version

    @property
    def name(self):
        return os.path.basename(self.path)

    def exists(self):
        return os.path.isdir(self.path)

    def file(self, key):
        return os.path.join(self.path, key)

    def read(self, key, default=None):
        return read_text(self.path, key, default)

    def _cpuset_key(self, key):
        # v1 names every file cpuset.X; so does v2 for the cpuset controller.
        return "cpuset." + key

    @property
    def cpus(self):
        return parse_cpulist(self.read(self._cpuset_key("cpus"), ""))

    @property
    def effective_cpus(self):
        return parse_cpulist(self.read(self._cpuset_key("effective_cpus" if self.version == 1 else "cpus.effective"), ""))

    @property
    def mems(self):
        return parse_cpulist(self.read(self._cpuset_key("mems"), ""))

    @property
    def effective_mems(self):
        return parse_cpulist(self.read(self._cpuset_key("effective_mems" if self.version == 1 else "mems.effective"), ""))

    @property
    def partition_state(self):
        """v2: ``member``, ``root``, ``isolated`` or ``root invalid (reason)``; v1: derived."""
        if self.version == 2:
            return self.read("cpuset.cpus.partition", "member")
        if self.read("cpuset.cpu_exclusive", "0") == "1":
            return "root" if self.read("cpuset.sched_load_balance", "1") == "1" else "isolated"
        return "member"

    @property
    def exclusive(self):
        return self.partition_state in ("root", "isolated")

    def children(self):
        if not self.exists():
            return []
        return [Cgroup(os.path.join(self.path, entry), self.version)
                for entry in sorted(os.listdir(self.path))
                if os.path.isdir(os.path.join(self.path, entry))]

    def child(self, name):
        return Cgroup(os.path.join(self.path, name), self.version)

    def pids(self):
        text = self.read("cgroup.procs", "")
        return [int(p) for p in text.split()] if text else []

    def to_dict(self):
        return {"path": self.path, "cpus": format_cpulist(self.cpus),
                "effective_cpus": format_cpulist(self.effective_cpus),
                "mems": format_cpulist(self.mems), "partition": self.partition_state}


class CgroupLayout:
    """Where cgroups are mounted on a node, and which cpuset hierarchy libvirt uses."""

    def __init__(self, mode, cpuset_version, cpuset_root, machine, systemd, v2_root=None):
        self.mode = mode                        # v1 | v2 | hybrid
        self.cpuset_version = cpuset_version    # 1 | 2 | None
        self.cpuset_root = cpuset_root          # path of the hierarchy holding cpuset
        self.machine = machine                  # Cgroup libvirt places guests in (may not exist yet)
        self.systemd = systemd
        self.v2_root = v2_root

    def partitions(self):
        """Partition cgroups found below the machine cgroup: name -> Cgroup."""
        found = {}
        if self.machine is None:
            return found
        for child in self.machine.children():
            name = partition_name_of(child.name)
            if name:
                found[name] = child
        return found

    def problems(self):
        """Why this layout cannot carry partitions, one sentence per cause naming the cgroup file
        and what the kernel reads back there; empty when it can."""
        found = []
        if self.cpuset_version is None:
            if self.v2_root:
                controllers = read_text(self.v2_root, "cgroup.controllers", "")
                found.append("%s reads '%s': the kernel offers no cpuset controller to the unified hierarchy "
                             "and no v1 cpuset hierarchy is mounted"
                             % (os.path.join(self.v2_root, "cgroup.controllers"), controllers))
            else:
                found.append("no cpuset hierarchy is mounted")
            return found
        if self.cpuset_version == 2:
            found.extend(self._v2_delegation())
        for cgroup in [self.machine] + sorted(self.partitions().values(), key=lambda c: c.path):
            if cgroup is None or not cgroup.exists():
                continue
            state = cgroup.read("cpuset.cpus.partition") if self.cpuset_version == 2 else None
            if state and "invalid" in state:
                found.append("%s reads '%s': the kernel does not hold this partition; set it back to "
                             "'member' (or fix what the reason names) before hpcvirt changes the node"
                             % (cgroup.file("cpuset.cpus.partition"), state))
        return found

    def _v2_delegation(self):
        """v2: cpuset must be enabled in every ``cgroup.subtree_control`` from the root down to the
        machine cgroup (so it has cpuset files) and in the machine cgroup's own (so partition
        cgroups below it do)."""
        if self.machine is None:
            return []
        if not self.machine.exists():
            if self.systemd:
                return ["%s does not exist: systemd creates it when libvirt starts the first guest, and "
                        "hpcvirt does not create a cgroup systemd owns; start a guest first"
                        % self.machine.path]
            return []
        found = []
        relative = os.path.relpath(self.machine.path, self.cpuset_root)
        if relative.startswith(".."):
            return ["%s is not below the cpuset hierarchy %s" % (self.machine.path, self.cpuset_root)]
        parts = relative.split(os.sep)
        chain = [os.path.join(self.cpuset_root, *parts[:depth]) for depth in range(len(parts))]
        for parent in chain:
            control = read_text(parent, "cgroup.subtree_control", "")
            if "cpuset" not in control.split():
                found.append("%s reads '%s': cpuset is not enabled for the cgroups below %s, so %s has no "
                             "cpuset files" % (os.path.join(parent, "cgroup.subtree_control"), control, parent,
                                               self.machine.path))
                return found
        control = self.machine.read("cgroup.subtree_control", "")
        if "cpuset" not in control.split():
            found.append("%s reads '%s': cpuset is not enabled below the machine cgroup (libvirt enables "
                         "it when it starts a guest there), so a partition cgroup would have no cpuset files"
                         % (self.machine.file("cgroup.subtree_control"), control))
        return found

    def guest_cgroups(self):
        """Cgroups of guests below the machine cgroup (everything that is not a partition)."""
        if self.machine is None:
            return []
        return [c for c in self.machine.children() if partition_name_of(c.name) is None]

    def to_dict(self):
        return {
            "mode": self.mode,
            "cpuset_version": self.cpuset_version,
            "cpuset_root": self.cpuset_root,
            "machine_cgroup": self.machine.path if self.machine else None,
            "machine_cgroup_exists": bool(self.machine and self.machine.exists()),
            "systemd": self.systemd,
            "problems": self.problems(),
        }


def detect_layout(root="/", machine_name=None):
    """Find the cgroup mode, the cpuset hierarchy and libvirt's machine cgroup below ``root``."""
    text = read_text(root, "proc/self/mountinfo")
    if text is None:
        raise CgroupError("cannot read %s" % os.path.join(root, "proc/self/mountinfo"))
    mounts = parse_mountinfo(text)

    def under_root(path):
        return os.path.join(root, path.lstrip("/"))

    v1_cpuset = None
    v2_root = None
    has_v1 = False
    for mountpoint, fstype, options in mounts:
        if fstype == "cgroup":
            has_v1 = True
            if "cpuset" in options and v1_cpuset is None:
                v1_cpuset = under_root(mountpoint)
        elif v2_root is None:
            v2_root = under_root(mountpoint)

    if has_v1 and v2_root:
        mode = "hybrid"
    elif has_v1:
        mode = "v1"
    elif v2_root:
        mode = "v2"
    else:
        raise CgroupError("no cgroup filesystem is mounted (read %s)" % os.path.join(root, "proc/self/mountinfo"))

    if v1_cpuset:
        version, cpuset_root = 1, v1_cpuset
    elif v2_root and "cpuset" in read_text(v2_root, "cgroup.controllers", "").split():
        version, cpuset_root = 2, v2_root
    else:
        version, cpuset_root = None, None

    systemd = read_text(root, "proc/1/comm", "") == "systemd"
    machine = None
    if cpuset_root:
        if machine_name is None:
            for candidate in ("machine.slice", "machine"):
                if os.path.isdir(os.path.join(cpuset_root, candidate)):
                    machine_name = candidate
                    break
            else:
                machine_name = "machine.slice" if systemd else "machine"
        machine = Cgroup(os.path.join(cpuset_root, machine_name), version)
    return CgroupLayout(mode, version, cpuset_root, machine, systemd, v2_root=v2_root)
