# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Virtual System Environments: the schema, the layer merge, provenance, digest and placement.

A VSE is the description of the VM a user's work needs, assembled from ordered layers (vendor,
site, node group, user, instance). Each layer is ``{"name": ..., "spec": {...}}``. The merge:

* ``key: value`` sets the key; dicts merge recursively, scalars and lists are replaced;
* ``key+: [items]`` adds to the list ``key``; in the keyed lists (``disks`` by ``dev``,
  ``networks`` by ``name``) an item whose identity already exists is merged into it;
* ``key-: [items]`` removes list elements (values, or identities / ``{dev: vdb}`` in keyed lists);
* ``key-: null`` removes ``key`` itself.

The merge, validation and resolution are pure (no libvirt, no files), so they run on the
controller (the ``vse_merge`` filter) and on the node alike. The last part is the composition the
``vse`` module runs: ``plan_vse`` takes the node (``_node.NodeState``) and the module's options and
returns the plan of typed actions (``create_directory``, ``create_overlay``, ``define``,
``set_live``, ``start``, ``stop``, ``destroy``, ``undefine``, ``delete_overlay``) that
``_plan.execute`` carries out. Placement is THE policy, ``_placement.desired_state``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import time

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Action, Context, Plan

# Smallest guest memory accepted. A current x86_64 distribution kernel decompresses itself,
# unpacks the initramfs and sets up its page tables and per-CPU areas in well under 64 MiB; below
# that, direct kernel boot ends in an out-of-memory panic before userspace starts.
MIN_MEMORY_MIB = 64

DOMAIN_TYPES = ("kvm", "qemu")
PLACEMENT_MODES = ("dedicated", "shared")
NUMA_MODES = ("strict", "preferred", "interleave", "restrictive")
DISK_BUSES = ("virtio", "scsi", "sata", "ide")
HUGEPAGE_SIZES = {"2M": 2048, "2048K": 2048, "1G": 1048576, "1048576K": 1048576}
KEYED_LISTS = {"disks": "dev", "networks": "name"}
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class VseError(HpcvirtError, ValueError):
    """A spec or layer that cannot be merged or validated; the message names key and layer."""


# The schema: for each key its type and, for dicts, the keys allowed inside. Values: a type name,
# or a dict for nested dicts, or ("list", item schema) for lists.
SCHEMA = {
    "name": "str",
    "domain_type": "str",
    "vcpus": "int",
    "memory": "int",
    "hugepages": "str",
    "memory_locked": "bool",
    "boot": {"kernel": "str", "initrd": "str", "cmdline": "str", "dev": "str"},
    "disks": ("list", {
        "dev": "str", "master": "str", "volume": "str", "overlay": "bool", "pool": "str",
        "pool_dir": "str", "size": "int", "bus": "str", "format": "str", "readonly": "bool",
    }),
    "networks": ("list", {
        "name": "str", "network": "str", "bridge": "str", "type": "str", "mac": "str", "model": "str",
        "ip": "str", "ip_range": "str", "prefix": "int", "hostname": "str",
    }),
    "placement": {"mode": "str", "partition": "str", "cpu_shares": "int", "vcpu_quota": "int",
                  "vcpu_period": "int"},
    "emulator": {"cpus": "str"},
    "numa": {"mode": "str", "nodeset": "str"},
    "allowed_users": ("list", "str"),
    "limits": {"cpu_quota": "int", "cpu_period": "int", "memory_hard_limit": "int",
               "memory_soft_limit": "int"},
    "console": {"path": "str"},
    "metadata": "dict",
}

DEFAULTS = {
    "domain_type": "kvm",
    "vcpus": 1,
    "memory": 512,
    "memory_locked": False,
    "boot": {"dev": "hd"},
    "disks": [],
    "networks": [],
    "placement": {"mode": "shared"},
    "emulator": {},
    "numa": {},
    "allowed_users": [],
    "limits": {},
    "console": {},
    "metadata": {},
}

_PYTYPES = {"str": str, "int": int, "bool": bool, "dict": dict, "list": list}


def split_operator(key):
    """``"disks+"`` -> ("disks", "+"); ``"disks-"`` -> ("disks", "-"); ``"disks"`` -> ("disks", "")."""
    if isinstance(key, str) and len(key) > 1 and key[-1] in "+-":
        return key[:-1], key[-1]
    return key, ""


# --------------------------------------------------------------------------------------------
# Checking one layer's keys against the schema (so an unknown key names the layer it came from)


def check_layer_keys(spec, layer, schema=None, path=""):
    """Raise VseError for the first key of ``spec`` that the schema does not know."""
    schema = SCHEMA if schema is None else schema
    if not isinstance(spec, dict):
        raise VseError("layer '%s': %s must be a mapping, got %s" % (layer, path or "spec", type(spec).__name__))
    for raw_key, value in spec.items():
        key, op = split_operator(raw_key)
        full = path + key
        if key not in schema:
            raise VseError("layer '%s': unknown key '%s' (known keys%s: %s)"
                           % (layer, path + str(raw_key), " of " + path.rstrip(".") if path else "",
                              ", ".join(sorted(schema))))
        sub = schema[key]
        if op == "-" and value is None:
            continue
        if op and not (isinstance(sub, tuple) and sub[0] == "list"):
            if op == "+" or value is not None:
                raise VseError("layer '%s': '%s%s' applies to lists only (use '%s-: null' to remove a key)"
                               % (layer, full, op, full))
        if isinstance(sub, dict) and value is not None and not op:
            check_layer_keys(value, layer, sub, full + ".")
        elif isinstance(sub, tuple) and isinstance(sub[1], dict) and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    check_layer_keys(item, layer, sub[1], "%s[%d]." % (full, index))


# --------------------------------------------------------------------------------------------
# The merge


def _identity(listkey, item):
    idkey = KEYED_LISTS.get(listkey)
    if idkey is None:
        return json.dumps(item, sort_keys=True)
    if isinstance(item, dict):
        return item.get(idkey)
    return item  # a bare identity, as in ``disks-: [vdb]``


def _merge_value(base, value):
    if isinstance(base, dict) and isinstance(value, dict):
        return merge_dicts(base, value)
    return copy.deepcopy(value)


def merge_dicts(base, overlay, path=""):
    """``overlay`` applied to ``base`` with the operators of this module (``base`` is not changed)."""
    result = copy.deepcopy(base)
    for raw_key, value in overlay.items():
        key, op = split_operator(raw_key)
        if op == "-" and value is None:
            result.pop(key, None)
        elif op == "-":
            result[key] = _remove_items(key, result.get(key) or [], value, path + key)
        elif op == "+":
            result[key] = _add_items(key, result.get(key) or [], value, path + key)
        else:
            result[key] = _merge_value(result.get(key), value)
    return result


def _as_list(value, where):
    if not isinstance(value, list):
        raise VseError("%s: '+' and '-' take a list, got %s" % (where, type(value).__name__))
    return value


def _add_items(key, current, items, where):
    merged = list(copy.deepcopy(current))
    for item in _as_list(items, where + "+"):
        ident = _identity(key, item)
        if key in KEYED_LISTS:
            if ident is None:
                raise VseError("%s+: every item needs '%s'" % (where, KEYED_LISTS[key]))
            for index, existing in enumerate(merged):
                if _identity(key, existing) == ident:
                    merged[index] = merge_dicts(existing, item)
                    break
            else:
                merged.append(copy.deepcopy(item))
        elif ident not in [_identity(key, e) for e in merged]:
            merged.append(copy.deepcopy(item))
    return merged


def _remove_items(key, current, items, where):
    drop = set(_identity(key, item) for item in _as_list(items, where + "-"))
    return [item for item in current if _identity(key, item) not in drop]


def _normalise_layers(layers):
    normalised = []
    for index, layer in enumerate(layers or []):
        if not isinstance(layer, dict):
            raise VseError("layers[%d]: a layer is a mapping with 'name' and 'spec'" % index)
        unknown = sorted(set(layer) - {"name", "spec"})
        if unknown:
            raise VseError("layers[%d]: unknown key '%s' (a layer has 'name' and 'spec')" % (index, unknown[0]))
        name = str(layer.get("name") or "layer%d" % index)
        spec = layer.get("spec") or {}
        normalised.append((name, spec))
    names = [name for name, _unused in normalised]
    for name in names:
        if names.count(name) > 1:
            raise VseError("layers: the layer name '%s' is used twice; names make provenance readable, "
                           "give each layer its own" % name)
    return normalised


def merge_layers(layers):
    """Merge ordered layers; return (spec, provenance: top-level key -> the layer that last set it)."""
    spec = {}
    provenance = {}
    for name, layer_spec in _normalise_layers(layers):
        check_layer_keys(layer_spec, name)
        spec = merge_dicts(spec, layer_spec)
        for raw_key in layer_spec:
            key, op = split_operator(raw_key)
            if key in spec:
                provenance[key] = name
            else:
                provenance.pop(key, None)
    return spec, provenance


# --------------------------------------------------------------------------------------------
# Validation of the merged spec


def _type_error(key, expected, value, provenance):
    origin = provenance.get(key.split(".")[0].split("[")[0])
    where = " (set by layer '%s')" % origin if origin else ""
    return VseError("%s: expected %s, got %r%s" % (key, expected, value, where))


def _check_types(value, schema, path, provenance):
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _type_error(path, "a mapping", value, provenance)
        for key, item in value.items():
            if item is None:
                continue
            _check_types(item, schema[key], "%s.%s" % (path, key) if path else key, provenance)
    elif isinstance(schema, tuple):
        if not isinstance(value, list):
            raise _type_error(path, "a list", value, provenance)
        for index, item in enumerate(value):
            _check_types(item, schema[1], "%s[%d]" % (path, index), provenance)
    else:
        expected = _PYTYPES[schema]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise _type_error(path, "a %s" % schema, value, provenance)


def _choice(spec, key, value, choices, provenance):
    if value not in choices:
        raise _type_error(key, "one of %s" % ", ".join(choices), value, provenance)


def hugepage_size_kib(value):
    """``"2M"``/``"1G"``/``"2048"`` (KiB) -> KiB; VseError otherwise."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import parse_size_kb

    text = str(value).strip().upper().replace("IB", "").replace("B", "")
    try:
        size = int(text) if text.isdigit() else parse_size_kb(text)
    except ValueError:
        size = None
    if size not in HUGEPAGE_SIZES.values():
        raise VseError("hugepages: '%s' is not a hugepage size (2M or 1G)" % value)
    return size


def validate(spec, provenance=None, domain_name=None):
    """The merged spec with defaults filled in, or VseError naming the bad key (and its layer)."""
    provenance = provenance or {}
    for key in spec:
        if key not in SCHEMA:
            raise VseError("unknown key '%s' (known keys: %s)" % (key, ", ".join(sorted(SCHEMA))))
    full = copy.deepcopy(DEFAULTS)
    for key, value in spec.items():
        if value is None:
            continue
        full[key] = merge_dicts(full[key], value) if isinstance(full.get(key), dict) and isinstance(value, dict) \
            else copy.deepcopy(value)
    for key, value in list(full.items()):
        if value is None:
            full.pop(key)
            continue
        _check_types(value, SCHEMA[key], key, provenance)

    full.setdefault("name", domain_name)
    if not full.get("name"):
        raise VseError("name: every VSE needs a name")
    _choice(full, "domain_type", full["domain_type"], DOMAIN_TYPES, provenance)
    if full["vcpus"] < 1:
        raise _type_error("vcpus", "at least 1", full["vcpus"], provenance)
    if full["memory"] < MIN_MEMORY_MIB:
        raise VseError("memory: %d MiB is below the %d MiB a guest kernel needs to boot%s"
                       % (full["memory"], MIN_MEMORY_MIB,
                          " (set by layer '%s')" % provenance["memory"] if "memory" in provenance else ""))
    if full.get("hugepages"):
        size = hugepage_size_kib(full["hugepages"])
        if (full["memory"] * 1024) % size:
            raise VseError("memory: %d MiB is not a whole number of %s hugepages" % (full["memory"], full["hugepages"]))
    _validate_boot(full["boot"], provenance)
    _validate_disks(full["disks"], provenance)
    _validate_networks(full["networks"], provenance)
    _validate_placement(full["placement"], full["vcpus"], provenance)
    if full["numa"].get("mode"):
        _choice(full, "numa.mode", full["numa"]["mode"], NUMA_MODES, provenance)
    for key, value in full["metadata"].items():
        if not _XML_NAME.match(str(key)) or not isinstance(value, (str, int, float, bool)):
            raise VseError("metadata.%s: metadata is a flat mapping of XML-name keys to scalar values" % key)
    for user in full["allowed_users"]:
        if "," in user or not user:
            raise VseError("allowed_users: '%s' is not a user name" % user)
    return full


def _validate_boot(boot, provenance):
    if boot.get("kernel"):
        if not boot["kernel"].startswith("/"):
            raise _type_error("boot.kernel", "an absolute path", boot["kernel"], provenance)
        if boot.get("initrd") and not boot["initrd"].startswith("/"):
            raise _type_error("boot.initrd", "an absolute path", boot["initrd"], provenance)
    elif boot.get("initrd") or boot.get("cmdline"):
        raise VseError("boot: initrd and cmdline need boot.kernel (direct kernel boot)")
    _choice(boot, "boot.dev", boot.get("dev", "hd"), ("hd", "cdrom", "network"), provenance)


def _validate_disks(disks, provenance):
    seen = set()
    for index, disk in enumerate(disks):
        where = "disks[%d]" % index
        dev = disk.get("dev")
        if not dev or not re.match(r"^(vd|sd|hd)[a-z]+$", dev):
            raise _type_error(where + ".dev", "a target device such as vda", dev, provenance)
        if dev in seen:
            raise VseError("%s.dev: '%s' is used by two disks" % (where, dev))
        seen.add(dev)
        if bool(disk.get("master")) == bool(disk.get("volume")):
            raise VseError("%s (%s): give exactly one of 'master' (an overlay is made per instance) "
                           "or 'volume' (a plain volume)" % (where, dev))
        for key in ("master", "volume", "pool_dir"):
            if disk.get(key) and not disk[key].startswith("/"):
                raise _type_error("%s.%s" % (where, key), "an absolute path", disk[key], provenance)
        _choice(disk, where + ".bus", disk.get("bus", "virtio"), DISK_BUSES, provenance)


def _validate_networks(networks, provenance):
    seen = set()
    for index, net in enumerate(networks):
        where = "networks[%d]" % index
        name = net.get("name")
        if not name:
            raise VseError("%s.name: every network needs a name (the key that layers merge on)" % where)
        if name in seen:
            raise VseError("%s.name: '%s' is used by two networks" % (where, name))
        seen.add(name)
        kinds = [k for k in ("network", "bridge") if net.get(k)]
        kind = net.get("type") or (kinds[0] if kinds else None)
        if len(kinds) > 1 or kind not in ("network", "bridge", "user"):
            raise VseError("%s (%s): give one of 'network' (a libvirt network), 'bridge' (a host bridge) "
                           "or type: user" % (where, name))
        if kind in ("network", "bridge") and not net.get(kind):
            raise VseError("%s (%s): type %s needs '%s'" % (where, name, kind, kind))
        if net.get("ip") and net.get("ip_range"):
            raise VseError("%s (%s): give 'ip' or 'ip_range', not both" % (where, name))
        if net.get("mac") and not re.match(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$", net["mac"]):
            raise _type_error(where + ".mac", "a MAC address", net["mac"], provenance)


def _validate_placement(placement, vcpus, provenance):
    _choice(placement, "placement.mode", placement.get("mode"), PLACEMENT_MODES, provenance)
    if placement["mode"] == "dedicated":
        if not placement.get("partition"):
            raise VseError("placement.partition: dedicated placement needs a partition name (or 'auto')")
        for key in ("cpu_shares", "vcpu_quota", "vcpu_period"):
            if placement.get(key) is not None:
                raise VseError("placement.%s: applies to shared placement only (a dedicated guest owns its CPUs)" % key)
    elif placement.get("partition"):
        raise VseError("placement.partition: applies to dedicated placement only")
    if placement.get("cpu_shares") is not None and not 2 <= placement["cpu_shares"] <= 262144:
        raise _type_error("placement.cpu_shares", "2..262144", placement["cpu_shares"], provenance)
    if placement.get("vcpu_quota") is not None and placement["vcpu_quota"] != -1 and placement["vcpu_quota"] < 1000:
        raise _type_error("placement.vcpu_quota", "-1 or at least 1000 (microseconds)", placement["vcpu_quota"], provenance)


def check_domain_name(name):
    if not name or not _DOMAIN_NAME.match(name):
        raise VseError("name: '%s' is not a domain name (letters, digits, '.', '_', '-')" % name)


# --------------------------------------------------------------------------------------------
# Digest


def digest(spec):
    """A short stable digest of a merged spec (what the guest's metadata records)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def layer_names(layers):
    return [name for name, _unused in _normalise_layers(layers)]


# --------------------------------------------------------------------------------------------
# Resolution: every choice made, ready for _domain.build_domain_xml

DEFAULT_CONSOLE_DIR = "/var/lib/hpcvirt/console"


def _fill(template, values):
    """``{name}``, ``{hostname}``, ``{ip}``, ``{vse}`` in a kernel command line."""
    out = template
    for key, value in values.items():
        out = out.replace("{%s}" % key, "" if value is None else str(value))
    return out


def placement_request(name, spec):
    """The VSE's placement as a request of THE placement policy (``_placement.desired_state``)."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import normalise_request

    placement = spec["placement"]
    return normalise_request(0, {"name": name, "placement": placement["mode"], "partition": placement.get("partition"),
                                 "cpu_shares": placement.get("cpu_shares"), "vcpu_quota": placement.get("vcpu_quota")})


def place(view, name, spec, guest=None, current=None):
    """Where the guest ``name`` goes: ``_placement.desired_state``, or None to keep its placement.

    ``view``: ``_placement.view_of(node)``; ``guest``: the guest as ``_node.read_guest`` reports
    it (None for a new one); ``current``: its owned view. An existing guest whose VSE placement
    sections are unchanged since they were last applied keeps where it is (lift and drop may have
    moved it). The CPUs a dedicated guest gets are taken in ``view`` for the guests planned after
    it. Raises VseError naming the placement when the node cannot take the guest.
    """
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import (
        PlacementError, desired_state, new_guest,
    )

    recorded = (((current or {}).get("metadata") or {}).get("vse") or {}).get("placement_digest")
    if current and recorded == placement_digest(spec):
        return None
    nodeset = (spec.get("numa") or {}).get("nodeset")
    if guest is None:
        planned = new_guest(name, spec["vcpus"], nodeset)
    else:
        planned = dict(guest, vcpus={"current": spec["vcpus"], "maximum": spec["vcpus"]})
    try:
        want = desired_state(view, planned, placement_request(name, spec))
    except PlacementError as exc:
        raise VseError("placement.%s: %s" % ("partition" if spec["placement"]["mode"] == "dedicated" else "mode", exc))
    view.release(name)
    if want["mode"] == "dedicated":
        view.occupy(name, frozenset().union(*want["vcpu_pins"]))
    return want


def resolve(name, spec, want, layers=(), current=None, taken_ips=()):
    """The resolved VSE of domain ``name`` from a validated ``spec``.

    ``want``: where the guest goes (``place``), or None to keep the placement of ``current``
    (this guest's owned view now, or None). ``taken_ips``: addresses other guests hold.
    Raises VseError for an address the node cannot give.
    """
    from ansible_collections.hpcvirt.regime.plugins.module_utils._address import (
        AddressError, allocate_ip, range_prefix, stable_mac,
    )
    from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist

    current = current or {}
    meta_now = current.get("metadata") or {}
    resolved = {
        "name": name,
        "domain_type": spec["domain_type"],
        "vcpus": spec["vcpus"],
        "memory_kib": spec["memory"] * 1024,
        "hugepages_kib": hugepage_size_kib(spec["hugepages"]) if spec.get("hugepages") else None,
        "locked": bool(spec.get("memory_locked")),
        "cputune": {},
        "memtune": {},
        "numatune": {},
        "vcpu_cpuset": None,
    }
    placement = spec["placement"]
    meta_placement = {"mode": placement["mode"]}
    numa = spec.get("numa") or {}
    if want is not None and want["mode"] == "dedicated":
        resolved["cputune"]["vcpupin"] = {str(i): format_cpulist(cpus) for i, cpus in enumerate(want["vcpu_pins"])}
        resolved["cputune"]["emulatorpin"] = format_cpulist(want["emulator"])
        resolved["numatune"] = {"mode": numa.get("mode") or "strict",
                                "nodeset": numa.get("nodeset") or format_cpulist(want["nodeset"] or ()) or None}
        meta_placement["partition"] = want["partition"]
    else:
        if want is not None:
            resolved["vcpu_cpuset"] = format_cpulist(want["vcpu_pins"][0]) if want["vcpu_pins"] else None
            resolved["cputune"]["emulatorpin"] = format_cpulist(want["emulator"])
        for key, xml_key in (("cpu_shares", "shares"), ("vcpu_quota", "quota"), ("vcpu_period", "period")):
            if placement.get(key) is not None:
                resolved["cputune"][xml_key] = placement[key]
                if key != "vcpu_period":
                    meta_placement[key] = placement[key]
        if numa.get("mode"):
            resolved["numatune"] = {"mode": numa["mode"], "nodeset": numa.get("nodeset")}
    if (spec.get("emulator") or {}).get("cpus"):
        resolved["cputune"]["emulatorpin"] = format_cpulist(parse_cpulist(spec["emulator"]["cpus"]))
    limits = spec.get("limits") or {}
    if limits.get("cpu_quota") is not None:
        resolved["cputune"]["global_quota"] = limits["cpu_quota"]
        resolved["cputune"]["global_period"] = limits.get("cpu_period") or 100000
    for key in ("memory_hard_limit", "memory_soft_limit"):
        if limits.get(key) is not None:
            resolved["memtune"][key[len("memory_"):]] = limits[key] * 1024

    interfaces, addresses, first_ip, hostname = [], {}, None, name
    held = dict(meta_now.get("addresses") or {})
    for index, net in enumerate(spec.get("networks") or []):
        kind = net.get("type") or ("network" if net.get("network") else "bridge")
        ip = net.get("ip")
        if net.get("ip_range"):
            try:
                ip = allocate_ip(name, net["ip_range"], taken_ips or (), held.get(net["name"]))
            except (AddressError, ValueError) as exc:
                raise VseError("networks[%d].ip_range (%s): %s" % (index, net["name"], exc))
            prefix = net.get("prefix") or range_prefix(net["ip_range"])
            if prefix:
                ip = "%s/%d" % (ip, prefix)
        if ip:
            addresses[net["name"]] = ip.split("/")[0]
            first_ip = first_ip or ip
        if index == 0 and net.get("hostname"):
            hostname = net["hostname"]
        interfaces.append({"type": kind, "source": net.get(kind) if kind != "user" else None,
                           "mac": (net.get("mac") or stable_mac(name, index)).lower(),
                           "model": net.get("model") or "virtio"})
    resolved["interfaces"] = interfaces

    boot = spec.get("boot") or {}
    values = {"name": name, "hostname": hostname, "ip": first_ip, "vse": spec["name"]}
    resolved["os"] = {"kernel": boot.get("kernel"), "initrd": boot.get("initrd"),
                      "cmdline": _fill(boot["cmdline"], values) if boot.get("cmdline") else None,
                      "boot_dev": boot.get("dev") or "hd"}

    overlays = {}
    disks = []
    for disk in spec.get("disks") or []:
        entry = {"dev": disk["dev"], "bus": disk.get("bus") or "virtio", "readonly": bool(disk.get("readonly"))}
        if disk.get("master"):
            directory = disk.get("pool_dir") or os.path.dirname(disk["master"])
            entry.update(path=os.path.join(directory, "%s-%s.qcow2" % (name, disk["dev"])), format="qcow2",
                         master=disk["master"], pool=disk.get("pool"), pool_dir=directory, size=disk.get("size"))
            overlays[disk["dev"]] = entry["path"]
        else:
            entry.update(path=disk["volume"], format=disk.get("format") or "qcow2")
        disks.append(entry)
    resolved["disks"] = disks
    resolved["console_path"] = (spec.get("console") or {}).get("path") or "%s/%s.log" % (DEFAULT_CONSOLE_DIR, name)

    metadata = {
        "vse": {"name": spec["name"], "digest": digest(spec), "layers": ",".join(layers), "hostname": hostname},
        "placement": meta_placement,
    }
    if addresses:
        metadata["addresses"] = addresses
    if overlays:
        metadata["overlays"] = overlays
    if spec.get("allowed_users"):
        metadata["access"] = {"users": ",".join(spec["allowed_users"])}
    if spec.get("metadata"):
        metadata["meta"] = {str(k): str(v).lower() if isinstance(v, bool) else str(v)
                            for k, v in spec["metadata"].items()}
    resolved["metadata"] = metadata
    resolved["addresses"] = addresses
    resolved["hostname"] = hostname

    metadata["vse"]["placement_digest"] = placement_digest(spec)
    if want is None:
        keep_current_placement(resolved, current)
    return resolved


PLACEMENT_SECTIONS = ("placement", "numa", "emulator")
PLACEMENT_TUNING = ("vcpupin", "emulatorpin", "shares", "quota", "period")


def placement_digest(spec):
    """Digest of the parts of a spec that decide where the guest's threads run."""
    return digest({key: spec.get(key) for key in PLACEMENT_SECTIONS})


def keep_current_placement(resolved, current):
    """Leave an existing guest's placement as it is.

    The VSE's placement is where a guest starts. Once the guest exists, lift and drop (the
    placement and node_regime modules) move it; as long as the VSE's own placement sections are
    unchanged since they were last applied, provisioning again must not move the guest back.
    Changing them in a layer applies them again.
    """
    tune = current.get("cputune") or {}
    for key in PLACEMENT_TUNING:
        if tune.get(key) in (None, {}):
            resolved["cputune"].pop(key, None)
        else:
            resolved["cputune"][key] = tune[key]
    resolved["vcpu_cpuset"] = current.get("vcpu_cpuset")
    resolved["numatune"] = dict(current.get("numatune") or {})
    placement = ((current.get("metadata") or {}).get("placement"))
    if placement:
        resolved["metadata"]["placement"] = dict(placement)


# --------------------------------------------------------------------------------------------
# The composition the vse module runs: plan a guest's change from the NodeState, and the typed
# actions ``_plan.execute`` carries out.

SCHED_KEYS = {"shares": "cpu_shares", "quota": "vcpu_quota", "period": "vcpu_period",
              "global_quota": "global_quota", "global_period": "global_period"}
SCHED_DEFAULTS = {"shares": 1024, "quota": -1, "global_quota": -1, "period": 100000, "global_period": 100000}
UNDEFINE_FLAG_NAMES = ("VIR_DOMAIN_UNDEFINE_MANAGED_SAVE", "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
                       "VIR_DOMAIN_UNDEFINE_NVRAM")


def _run_create_directory(_ctx, step):
    os.makedirs(step.target, exist_ok=True)


def _run_create_overlay(ctx, step):
    from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage

    disk = step.detail["disk"]
    size = disk["size"] * 1024 * 1024 if disk.get("size") else None
    return storage.create_overlay(ctx.conn, disk["pool_dir"], disk.get("pool"), ctx.resolved["name"], disk["dev"],
                                  disk["master"], size)


def _run_define(ctx, _step):
    ctx.dom = ctx.conn.defineXML(ctx.xml)


def _run_set_live(ctx, step):
    apply_live(ctx.libvirt, ctx.dom, step.detail["field"], step.after, ctx.resolved, ctx.ncpus)


def _run_start(ctx, _step):
    ctx.dom.create()


def _run_stop(ctx, step):
    dom = ctx.dom
    if step.detail["mode"] == "shutdown":
        try:
            dom.shutdown()
        except ctx.libvirt.libvirtError:
            pass   # a guest without ACPI: powered off below
        deadline = time.monotonic() + step.detail["timeout"]
        while time.monotonic() < deadline:
            if not dom.isActive():
                return "shut down"
            time.sleep(0.2)
    if dom.isActive():
        dom.destroy()
    return "powered off"


def _run_destroy(ctx, _step):
    ctx.dom.destroy()


def undefine_flags(libvirt):
    """Undefine a guest with its managed save image, snapshot metadata and NVRAM (those libvirt has)."""
    flags = 0
    for name in UNDEFINE_FLAG_NAMES:
        flags |= getattr(libvirt, name, 0)
    return flags


def _run_undefine(ctx, _step):
    ctx.dom.undefineFlags(undefine_flags(ctx.libvirt))
    ctx.dom = None


def _run_delete_overlay(ctx, step):
    from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage

    return storage.delete_volume(ctx.conn, step.target)


CREATE_DIRECTORY = Action("create_directory", _run_create_directory, live=False)
CREATE_OVERLAY = Action("create_overlay", _run_create_overlay)
DEFINE = Action("define", _run_define)
SET_LIVE = Action("set_live", _run_set_live)
START = Action("start", _run_start)
STOP = Action("stop", _run_stop)
DESTROY = Action("destroy", _run_destroy)
UNDEFINE = Action("undefine", _run_undefine)
DELETE_OVERLAY = Action("delete_overlay", _run_delete_overlay)


def apply_live(libvirt, dom, field, value, resolved, ncpus):
    """One owned field of a running guest, changed live (the persistent side is the ``define``)."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import parse_cpulist, set_to_cpumap
    from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import write_domain_metadata

    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    key = field.split(".", 1)[-1]
    every_cpu = frozenset(range(ncpus))
    if field == "metadata":
        write_domain_metadata(dom, resolved["metadata"], live)
    elif field == "cputune.vcpupin":
        for vcpu, cpus in (value or {}).items():
            dom.pinVcpuFlags(int(vcpu), set_to_cpumap(parse_cpulist(cpus), ncpus), live)
    elif field == "vcpu_cpuset":
        # the shared pool moved (the partition module changed the layout): follow it live
        cpus = parse_cpulist(value) if value else every_cpu
        pinned = set((resolved["cputune"].get("vcpupin") or {}).keys())
        for vcpu in range(resolved["vcpus"]):
            if str(vcpu) not in pinned:
                dom.pinVcpuFlags(vcpu, set_to_cpumap(cpus, ncpus), live)
    elif field == "cputune.emulatorpin":
        dom.pinEmulator(set_to_cpumap(parse_cpulist(value) if value else every_cpu, ncpus), live)
    elif field.startswith("cputune."):
        dom.setSchedulerParametersFlags({SCHED_KEYS[key]: value if value is not None else SCHED_DEFAULTS[key]}, live)
    elif field.startswith("memtune."):
        dom.setMemoryParameters({key: value if value is not None else libvirt.VIR_DOMAIN_MEMORY_PARAM_UNLIMITED}, live)
    else:
        raise VseError("%s: not a field a running guest takes live" % field)


def is_managed(view):
    return "vse" in (view.get("metadata") or {})


def merged_spec(params):
    """(validated spec, provenance, layer names) of the module's ``layers`` and ``spec``."""
    layers = list(params["layers"] or [])
    if params.get("spec") is not None:
        layers.append({"name": "spec", "spec": params["spec"]})
    check_domain_name(params["name"])
    spec, provenance = merge_layers(layers)
    spec = validate(spec, provenance, domain_name=params["name"])
    return spec, provenance, layer_names(layers)


def check_files(resolved, volume_exists):
    """Masters, kernels and plain volumes must exist; returns the overlays still to create."""
    missing = []
    for disk in resolved["disks"]:
        if disk.get("master"):
            if not os.path.isfile(disk["master"]):
                raise VseError("disks (%s).master: master image %s does not exist" % (disk["dev"], disk["master"]))
            if not volume_exists(disk["path"]):
                missing.append(disk)
        elif not os.path.exists(disk["path"]):
            raise VseError("disks (%s).volume: %s does not exist" % (disk["dev"], disk["path"]))
    for path, what in ((resolved["os"].get("kernel"), "boot.kernel"), (resolved["os"].get("initrd"), "boot.initrd")):
        if path and not os.path.isfile(path):
            raise VseError("%s: %s does not exist" % (what, path))
    return missing


def held_addresses(node, name):
    """Addresses the node's other guests hold (their hpcvirt metadata)."""
    taken = set()
    for guest in node.guests:
        if guest["name"] != name:
            taken |= set(((guest.get("hpcvirt") or {}).get("addresses") or {}).values())
    return frozenset(taken)


def owned_views(dom, libvirt):
    """(persistent, live or None) owned views of a domain."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import owned_view

    persistent = owned_view(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    return persistent, owned_view(dom.XMLDesc(0)) if dom.isActive() else None


def plan_vse(node, params, libvirt, volume_exists=None):
    """Plan and report of the vse module's run on ``node`` (a ``_node.NodeState`` with guests).

    Returns ``(plan, ctx, report)``: ``ctx`` is the ``_plan.Context`` the plan executes with,
    ``report`` the module's return values besides plan, diff and timings. Raises VseError (or
    another ``HpcvirtError``) naming the field when the request cannot be carried out; nothing
    is changed before that.
    """
    from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage

    name = params["name"]
    dom = node.domains.get(name)
    ctx = Context(conn=node.conn, libvirt=libvirt, ncpus=node.ncpus, dom=dom, resolved=None, xml=None)
    volume_exists = volume_exists or (lambda path: storage.volume_exists(node.conn, path))
    persistent, live = owned_views(dom, libvirt) if dom is not None else (None, None)
    if params["state"] == "absent":
        return plan_absent(ctx, params, persistent, volume_exists)
    spec, provenance, names = merged_spec(params)
    if persistent is not None and not is_managed(persistent):
        raise VseError("name: a domain called '%s' already exists and was not created by hpcvirt.regime.vse; "
                       "choose another name" % name)
    from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import build_domain_xml, owned_view
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import view_of

    want = place(view_of(node), name, spec, node.guest(name), persistent)
    resolved = resolve(name, spec, want, names, persistent, held_addresses(node, name))
    if dom is not None:
        resolved["uuid"] = dom.UUIDString()
    ctx.resolved = resolved
    ctx.xml = build_domain_xml(resolved)
    plan, restart = plan_present(params, resolved, owned_view(ctx.xml), persistent, live,
                                 check_files(resolved, volume_exists))
    report = {"spec": spec, "provenance": provenance, "digest": digest(spec),
              "resolved": {k: v for k, v in resolved.items() if k != "uuid"}, "xml": ctx.xml,
              "addresses": resolved["addresses"], "restart_required": bool(restart), "restart_fields": restart}
    return plan, ctx, report


def plan_present(params, resolved, desired, persistent, live, overlays):
    """The steps that bring the domain's definition (and live state) to ``resolved``."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import compare, needs_restart

    plan = Plan()
    name, state = resolved["name"], params["state"]
    console_dir = os.path.dirname(resolved["console_path"])
    if not os.path.isdir(console_dir):
        plan.add(CREATE_DIRECTORY, console_dir, before=None, after="present")
    for disk in overlays:
        plan.add(CREATE_OVERLAY, disk["path"], before=None, after={"backing": disk["master"]}, disk=disk)
    restart = []
    if persistent is None:
        plan.add(DEFINE, name, before=None, after=desired)
    else:
        changes = compare(desired, persistent)
        if changes:
            plan.add(DEFINE, name, before={f: have for f, have, _unused in changes},
                     after={f: want for f, _unused, want in changes})
        if live is not None and state != "stopped":
            changes = compare(desired, live)
            restart = needs_restart(changes)
            for field, have, want in changes:
                if field not in restart:
                    plan.add(SET_LIVE, "%s %s" % (name, field), before=have, after=want, field=field)
    if state == "running" and live is None:
        plan.add(START, name, before="shutoff", after="running")
    elif state == "stopped" and live is not None:
        plan.add(STOP, name, before="running", after="shutoff", mode=params["stop_mode"],
                 timeout=params["shutdown_timeout"])
    return plan, restart


def plan_absent(ctx, params, persistent, volume_exists):
    """Destroy (with force), undefine and delete the overlays of a guest the vse module made."""
    plan = Plan()
    report = {"restart_required": False, "restart_fields": []}
    name = params["name"]
    if persistent is None:
        return plan, ctx, report
    if not is_managed(persistent):
        raise VseError("name: domain '%s' was not created by hpcvirt.regime.vse (no hpcvirt vse metadata); "
                       "refusing to remove it" % name)
    if ctx.dom.isActive():
        if not params["force"]:
            raise VseError("state: domain '%s' is running; set force=true to destroy and remove it" % name)
        plan.add(DESTROY, name, before="running", after="shutoff")
    plan.add(UNDEFINE, name, before="defined", after=None)
    if not params["keep_disks"]:
        for dev, path in sorted((persistent["metadata"].get("overlays") or {}).items()):
            if volume_exists(path):
                plan.add(DELETE_OVERLAY, path, before="present", after=None, dev=dev)
    return plan, ctx, report


def undo_new_overlays(ctx):
    """After a failed run: overlays this run created for a guest that never got defined are deleted
    (a defined guest keeps its disks). Returns the paths deleted."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage

    if ctx.get("dom") is not None:
        return []
    created = [step.target for step in ctx.done if step.action is CREATE_OVERLAY]
    return storage.delete_volumes(ctx.conn, created) if created else []


def domain_state(ctx):
    """The guest's state after the run (``absent`` when it is not defined)."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._node import domain_state as state_of

    return "absent" if ctx.get("dom") is None else state_of(ctx.dom)
