"""Unit tests of domain XML building and the semantic comparison with libvirt's XML.

``dedicated-built.xml`` is what build_domain_xml made for a dedicated, hugepage-backed guest with
two networks; ``dedicated-libvirt.xml`` is what a real libvirtd 9.0 returned after defining it
(addresses, default controllers, expanded machine type, cpu model added).
"""

import os

from lxml import etree

from ansible_collections.hpcvirt.regime.plugins.module_utils._domain import (
    build_domain_xml,
    compare,
    needs_restart,
    owned_view,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import metadata_from_domain_xml
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import classify_placement, parse_domain_xml

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "domain")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def resolved(**extra):
    base = {
        "name": "g1", "domain_type": "qemu", "vcpus": 2, "memory_kib": 262144, "hugepages_kib": None,
        "locked": False, "vcpu_cpuset": None, "cputune": {"shares": 512}, "memtune": {}, "numatune": {},
        "os": {"kernel": "/img/k", "initrd": "/img/i", "cmdline": "console=ttyS0", "boot_dev": "hd"},
        "disks": [{"dev": "vda", "bus": "virtio", "path": "/img/g1-vda.qcow2", "format": "qcow2"}],
        "interfaces": [{"type": "network", "source": "default", "mac": "52:54:00:00:00:01", "model": "virtio"}],
        "console_path": "/var/lib/hpcvirt/console/g1.log",
        "metadata": {"vse": {"name": "g1", "digest": "abc", "layers": "a,b"}, "placement": {"mode": "shared"}},
    }
    base.update(extra)
    return base


def test_built_xml_has_every_owned_element():
    root = etree.fromstring(fixture("dedicated-built.xml").encode())
    assert root.get("type") == "qemu"
    assert root.find("cputune/vcpupin").get("cpuset") == "1"
    assert root.find("cputune/emulatorpin").get("cpuset") == "0"
    assert root.find("memoryBacking/hugepages/page").get("size") == "2048"
    assert root.find("memoryBacking/locked") is not None
    assert root.find("numatune/memory").get("mode") == "strict"
    assert root.find("devices/serial/source").get("append") == "on"
    assert [i.get("type") for i in root.findall("devices/interface")] == ["user", "bridge"]


def test_libvirt_additions_are_not_differences():
    assert compare(owned_view(fixture("dedicated-built.xml")), owned_view(fixture("dedicated-libvirt.xml"))) == []


def test_metadata_round_trips_for_node_info():
    meta = metadata_from_domain_xml(fixture("dedicated-libvirt.xml"))
    assert meta["placement"] == {"mode": "dedicated", "partition": "p0"}
    assert meta["vse"]["layers"] == "vendor"
    parsed = parse_domain_xml(fixture("dedicated-libvirt.xml"))
    assert parsed["memory_backing"]["locked"] is True
    assert parsed["memory_backing"]["hugepages"][0]["size"] == "2048"
    partitions = {"p0": {"cpus": "1"}}
    assert classify_placement([{1}], partitions, frozenset({0})) == ("dedicated", "p0")


def test_shared_xml_round_trip_and_changes():
    xml = build_domain_xml(resolved())
    view = owned_view(xml)
    assert view["cputune"]["shares"] == 512 and view["cputune"]["vcpupin"] == {}
    assert compare(view, owned_view(xml)) == []
    changed = owned_view(build_domain_xml(resolved(cputune={"shares": 256}, vcpus=4)))
    diff = compare(changed, view)
    assert ("cputune.shares", 512, 256) in diff
    assert ("vcpus", 2, 4) in diff
    assert len(diff) == 2
    assert needs_restart(diff) == ["vcpus"]


def test_only_live_fields_avoid_restart():
    view = owned_view(build_domain_xml(resolved()))
    pinned = owned_view(build_domain_xml(resolved(cputune={"shares": 512, "vcpupin": {"0": "1", "1": "1"}},
                                                  memtune={"hard_limit": 1048576})))
    diff = compare(pinned, view)
    assert {f for f, _unused, _unused in diff} == {"cputune.vcpupin", "memtune.hard_limit"}
    assert needs_restart(diff) == []
    moved = owned_view(build_domain_xml(resolved(disks=[], console_path="/tmp/x.log")))
    assert set(needs_restart(compare(moved, view))) == {"disks", "console_path"}


def test_units_and_cpulists_are_normalised():
    view = owned_view(build_domain_xml(resolved(cputune={"emulatorpin": "0,1,2,3"})))
    text = build_domain_xml(resolved(cputune={"emulatorpin": "0-3"})).replace(
        "<memory unit=\"KiB\">262144</memory>", "<memory unit=\"MiB\">256</memory>")
    assert compare(view, owned_view(text)) == []


def test_disk_boot_and_kernel_boot():
    disk_boot = owned_view(build_domain_xml(resolved(os={"boot_dev": "hd"})))
    assert disk_boot["os"] == {"kernel": None, "initrd": None, "cmdline": None, "boot_dev": "hd"}
    kernel = owned_view(fixture("dedicated-libvirt.xml"))
    assert kernel["os"]["boot_dev"] is None   # libvirt's added <boot dev='hd'/> is not ours


def test_network_xml():
    root = etree.fromstring(build_domain_xml(resolved(interfaces=[
        {"type": "network", "source": "hpc", "mac": "52:54:00:00:00:02", "model": "virtio"},
        {"type": "bridge", "source": "br0", "mac": "52:54:00:00:00:03", "model": "e1000"},
    ])).encode())
    nics = root.findall("devices/interface")
    assert nics[0].find("source").get("network") == "hpc"
    assert nics[1].find("source").get("bridge") == "br0"
    assert nics[1].find("model").get("type") == "e1000"
