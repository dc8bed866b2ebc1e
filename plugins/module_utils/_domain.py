# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Domain XML for a resolved VSE, and the semantic comparison with what libvirt holds.

``build_domain_xml`` turns a *resolved* VSE (every choice made: pins, addresses, overlay paths)
into domain XML with lxml. ``owned_view`` reads any domain XML (ours, or libvirt's with its
addresses, aliases, default controllers, expanded machine types) into the plain dict of the fields
a VSE owns, so two documents are equal exactly when the guest is what the spec asks for.
``compare`` lists the differences; ``LIVE_FIELDS`` are the ones a running guest takes without a
restart (scheduler parameters, pins and the vCPUs' cpuset, memory tunables, metadata).
"""

from __future__ import annotations

from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import (
    format_cpulist,
    parse_cpulist,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import (
    NAMESPACE,
    PREFIX,
    ROOT,
    metadata_from_domain_xml,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._state import to_int as _int

try:
    from lxml import etree
except ImportError:  # reported by _libvirt.require_libraries in the module
    etree = None

LIVE_FIELDS = (
    "vcpu_cpuset", "cputune.shares", "cputune.quota", "cputune.period", "cputune.global_quota", "cputune.global_period",
    "cputune.vcpupin", "cputune.emulatorpin", "memtune.hard_limit", "memtune.soft_limit", "metadata",
)

_UNITS = {"b": 1.0 / 1024, "bytes": 1.0 / 1024, "k": 1, "kib": 1, "kb": 1000.0 / 1024,
          "m": 1024, "mib": 1024, "mb": 1000.0 * 1000 / 1024, "g": 1024 * 1024, "gib": 1024 * 1024}


def _sub(parent, tag, text=None, **attrs):
    element = etree.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = str(text)
    return element


def build_domain_xml(r):
    """Domain XML text for the resolved VSE ``r`` (see the module for its keys)."""
    root = etree.Element("domain", type=r["domain_type"])
    _sub(root, "name", r["name"])
    if r.get("uuid"):
        _sub(root, "uuid", r["uuid"])
    _build_metadata(_sub(root, "metadata"), r.get("metadata") or {})
    _sub(root, "memory", r["memory_kib"], unit="KiB")
    _sub(root, "currentMemory", r["memory_kib"], unit="KiB")
    if r.get("hugepages_kib") or r.get("locked"):
        backing = _sub(root, "memoryBacking")
        if r.get("hugepages_kib"):
            _sub(_sub(backing, "hugepages"), "page", size=r["hugepages_kib"], unit="KiB")
        if r.get("locked"):
            _sub(backing, "locked")
    _sub(root, "vcpu", r["vcpus"], placement="static", cpuset=r.get("vcpu_cpuset"))
    _build_cputune(root, r.get("cputune") or {})
    memtune = r.get("memtune") or {}
    if any(v is not None for v in memtune.values()):
        element = _sub(root, "memtune")
        for key in ("hard_limit", "soft_limit"):
            if memtune.get(key) is not None:
                _sub(element, key, memtune[key], unit="KiB")
    numatune = r.get("numatune") or {}
    if numatune.get("mode"):
        _sub(_sub(root, "numatune"), "memory", mode=numatune["mode"], nodeset=numatune.get("nodeset"))
    _build_os(root, r["os"])
    _sub(root, "features").append(etree.Element("acpi"))
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for disk in r.get("disks") or []:
        _build_disk(devices, disk)
    for nic in r.get("interfaces") or []:
        _build_interface(devices, nic)
    if r.get("console_path"):
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=r["console_path"], append="on")
        _sub(serial, "target", port=0)
        console = _sub(devices, "console", type="file")
        _sub(console, "source", path=r["console_path"], append="on")
        _sub(console, "target", type="serial", port=0)
    _sub(devices, "memballoon", model="none")
    return etree.tostring(root, pretty_print=True, encoding="unicode")


def _build_metadata(parent, data):
    element = etree.SubElement(parent, "{%s}%s" % (NAMESPACE, ROOT), nsmap={PREFIX: NAMESPACE})
    for key in sorted(data):
        attrs = {k: str(v) for k, v in sorted(data[key].items()) if v is not None}
        etree.SubElement(element, "{%s}%s" % (NAMESPACE, key), attrs)


def _build_cputune(root, tune):
    scalars = [k for k in ("shares", "period", "quota", "global_period", "global_quota") if tune.get(k) is not None]
    if not (tune.get("vcpupin") or tune.get("emulatorpin") or scalars):
        return
    element = _sub(root, "cputune")
    for key in scalars:
        _sub(element, key, tune[key])
    for vcpu, cpus in sorted((tune.get("vcpupin") or {}).items(), key=lambda item: int(item[0])):
        _sub(element, "vcpupin", vcpu=vcpu, cpuset=cpus)
    if tune.get("emulatorpin"):
        _sub(element, "emulatorpin", cpuset=tune["emulatorpin"])


def _build_os(root, spec):
    element = _sub(root, "os")
    _sub(element, "type", "hvm", arch="x86_64", machine="pc")
    if spec.get("kernel"):
        _sub(element, "kernel", spec["kernel"])
        if spec.get("initrd"):
            _sub(element, "initrd", spec["initrd"])
        if spec.get("cmdline"):
            _sub(element, "cmdline", spec["cmdline"])
    else:
        _sub(element, "boot", dev=spec.get("boot_dev") or "hd")


def _build_disk(devices, disk):
    element = _sub(devices, "disk", type="file", device="disk")
    _sub(element, "driver", name="qemu", type=disk.get("format") or "qcow2")
    _sub(element, "source", file=disk["path"])
    _sub(element, "target", dev=disk["dev"], bus=disk.get("bus") or "virtio")
    if disk.get("readonly"):
        _sub(element, "readonly")


def _build_interface(devices, nic):
    element = _sub(devices, "interface", type=nic["type"])
    if nic.get("mac"):
        _sub(element, "mac", address=nic["mac"])
    if nic["type"] == "network":
        _sub(element, "source", network=nic["source"])
    elif nic["type"] == "bridge":
        _sub(element, "source", bridge=nic["source"])
    _sub(element, "model", type=nic.get("model") or "virtio")


# --------------------------------------------------------------------------------------------
# Reading back: the fields a VSE owns


def _kib(element):
    if element is None or element.text is None:
        return None
    factor = _UNITS.get((element.get("unit") or "KiB").lower(), 1)
    return int(round(int(element.text) * factor))


def _cpus(text):
    return format_cpulist(parse_cpulist(text)) if text else None


def owned_view(xml_text):
    """The fields of a domain XML that a VSE owns, as a plain comparable dict."""
    root = etree.fromstring(xml_text.encode("utf-8") if isinstance(xml_text, str) else xml_text)
    vcpu = root.find("vcpu")
    page = root.find("memoryBacking/hugepages/page")
    hugepages = None
    if page is not None:
        hugepages = _kib(etree.fromstring("<x unit='%s'>%s</x>" % (page.get("unit") or "KiB", page.get("size"))))
    elif root.find("memoryBacking/hugepages") is not None:
        hugepages = "default"
    os_el = root.find("os")
    kernel = os_el.findtext("kernel") if os_el is not None else None
    numa = root.find("numatune/memory")
    tune = root.find("cputune")
    view = {
        "domain_type": root.get("type"),
        "name": root.findtext("name"),
        "memory_kib": _kib(root.find("memory")),
        "hugepages_kib": hugepages,
        "locked": root.find("memoryBacking/locked") is not None,
        "vcpus": _int(vcpu.text) if vcpu is not None else 1,
        "vcpu_cpuset": _cpus(vcpu.get("cpuset")) if vcpu is not None else None,
        "os": {
            "kernel": kernel,
            "initrd": os_el.findtext("initrd") if os_el is not None else None,
            "cmdline": os_el.findtext("cmdline") if os_el is not None else None,
            # libvirt adds <boot dev='hd'/> to kernel-booted guests: it only matters without a kernel
            "boot_dev": None if kernel else (os_el.find("boot").get("dev") if os_el is not None and os_el.find("boot") is not None else "hd"),
        },
        "cputune": {
            "shares": _int(tune.findtext("shares")) if tune is not None else None,
            "period": _int(tune.findtext("period")) if tune is not None else None,
            "quota": _int(tune.findtext("quota")) if tune is not None else None,
            "global_period": _int(tune.findtext("global_period")) if tune is not None else None,
            "global_quota": _int(tune.findtext("global_quota")) if tune is not None else None,
            "vcpupin": {pin.get("vcpu"): _cpus(pin.get("cpuset")) for pin in tune.findall("vcpupin")} if tune is not None else {},
            "emulatorpin": _cpus(tune.find("emulatorpin").get("cpuset")) if tune is not None and tune.find("emulatorpin") is not None else None,
        },
        "memtune": {
            "hard_limit": _kib(root.find("memtune/hard_limit")),
            "soft_limit": _kib(root.find("memtune/soft_limit")),
        },
        "numatune": {"mode": numa.get("mode", "strict"), "nodeset": _cpus(numa.get("nodeset"))} if numa is not None else {},
        "disks": _disks(root),
        "interfaces": _interfaces(root),
        "console_path": _console_path(root),
        "metadata": metadata_from_domain_xml(etree.tostring(root, encoding="unicode")),
    }
    return view


def _disks(root):
    disks = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        driver = disk.find("driver")
        disks.append({
            "dev": target.get("dev") if target is not None else None,
            "bus": target.get("bus") if target is not None else None,
            "path": (source.get("file") or source.get("dev") or source.get("volume")) if source is not None else None,
            "format": driver.get("type") if driver is not None else None,
            "readonly": disk.find("readonly") is not None,
        })
    return sorted(disks, key=lambda d: d["dev"] or "")


def _interfaces(root):
    nics = []
    for nic in root.findall("devices/interface"):
        source = nic.find("source")
        mac = nic.find("mac")
        model = nic.find("model")
        kind = nic.get("type")
        nics.append({
            "type": kind,
            "source": (source.get("network") if kind == "network" else source.get("bridge"))
            if source is not None and kind in ("network", "bridge") else None,
            "mac": mac.get("address").lower() if mac is not None else None,
            "model": model.get("type") if model is not None else None,
        })
    return nics


def _console_path(root):
    for serial in root.findall("devices/serial"):
        if serial.get("type") == "file" and serial.find("source") is not None:
            return serial.find("source").get("path")
    return None


def compare(desired, current, prefix=""):
    """Differences between two owned views: list of (field, current value, desired value)."""
    changes = []
    for key in sorted(set(desired) | set(current)):
        field = prefix + key
        want, have = desired.get(key), current.get(key)
        if field in ("cputune", "memtune", "os") and isinstance(want, dict) and isinstance(have, dict):
            changes.extend(compare(want, have, field + "."))
        elif want != have:
            changes.append((field, have, want))
    return changes


def needs_restart(changes):
    """Fields of ``changes`` a running guest cannot take live."""
    return [field for field, _have, _want in changes if field not in LIVE_FIELDS]
