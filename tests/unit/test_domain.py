"""Unit tests of domain XML building and the semantic comparison with libvirt's XML.

``dedicated-libvirt.xml`` is what a real libvirtd 9.0 returned after defining the XML that
build_domain_xml makes for ``DEDICATED`` below (a dedicated, hugepage-backed guest with two
networks): libvirt added addresses, default controllers, an expanded machine type, a cpu model.
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


# The resolved VSE that dedicated-libvirt.xml was made from.
DEDICATED = {
    "name": "hpcvirt-vse-rec", "domain_type": "qemu", "vcpus": 1, "memory_kib": 131072, "hugepages_kib": 2048,
    "locked": True, "vcpu_cpuset": None,
    "cputune": {"vcpupin": {"0": "1"}, "emulatorpin": "0"}, "memtune": {"hard_limit": 524288},
    "numatune": {"mode": "strict", "nodeset": "0"},
    "os": {"kernel": "/var/lib/hpcvirt/images/hpcvirt-tiny.vmlinuz", "initrd": "/var/lib/hpcvirt/images/hpcvirt-tiny.initrd",
           "cmdline": "console=ttyS0 hpcvirt.hostname=hpcvirt-vse-rec hpcvirt.ip=10.9.0.98/24", "boot_dev": "hd"},
    "disks": [{"dev": "vda", "bus": "virtio", "path": "/var/lib/hpcvirt/images/hpcvirt-tiny.qcow2", "format": "qcow2",
               "readonly": True}],
    "interfaces": [{"type": "user", "source": None, "mac": "52:54:00:7b:ca:70", "model": "virtio"},
                   {"type": "bridge", "source": "br-test", "mac": "52:54:00:26:fb:f9", "model": "virtio"}],
    "console_path": "/var/lib/hpcvirt/console/hpcvirt-vse-rec.log",
    "metadata": {"addresses": {"net0": "10.9.0.98"}, "meta": {"project": "demo"},
                 "placement": {"mode": "dedicated", "partition": "p0"},
                 "vse": {"digest": "6308fcd243fe20a0", "hostname": "hpcvirt-vse-rec", "layers": "vendor",
                         "name": "hpcvirt-vse-rec"}},
}


def test_built_xml_has_every_owned_element():
    root = etree.fromstring(build_domain_xml(DEDICATED).encode())
    assert root.get("type") == "qemu" and root.findtext("name") == "hpcvirt-vse-rec"
    assert root.find("uuid") is None                                   # none asked for: libvirt makes one
    assert (root.findtext("memory"), root.find("memory").get("unit")) == ("131072", "KiB")
    assert root.findtext("currentMemory") == "131072"
    assert root.find("vcpu").text == "1" and root.find("vcpu").get("cpuset") is None
    assert [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")] == [("0", "1")]
    assert root.find("cputune/emulatorpin").get("cpuset") == "0"
    assert root.find("cputune/shares") is None
    page = root.find("memoryBacking/hugepages/page")
    assert (page.get("size"), page.get("unit")) == ("2048", "KiB")
    assert root.find("memoryBacking/locked") is not None
    assert root.findtext("memtune/hard_limit") == "524288"
    assert (root.find("numatune/memory").get("mode"), root.find("numatune/memory").get("nodeset")) == ("strict", "0")
    assert root.findtext("os/kernel") == "/var/lib/hpcvirt/images/hpcvirt-tiny.vmlinuz"
    assert root.findtext("os/cmdline").endswith("hpcvirt.ip=10.9.0.98/24")
    assert root.find("os/boot") is None                                # kernel boot: no boot device
    disk = root.find("devices/disk")
    assert disk.find("source").get("file") == "/var/lib/hpcvirt/images/hpcvirt-tiny.qcow2"
    assert disk.find("driver").get("type") == "qcow2" and disk.find("readonly") is not None
    assert [i.get("type") for i in root.findall("devices/interface")] == ["user", "bridge"]
    assert root.find("devices/interface[@type='bridge']/source").get("bridge") == "br-test"
    assert [m.get("address") for m in root.findall("devices/interface/mac")] == ["52:54:00:7b:ca:70", "52:54:00:26:fb:f9"]
    serial = root.find("devices/serial/source")
    assert serial.get("path") == "/var/lib/hpcvirt/console/hpcvirt-vse-rec.log" and serial.get("append") == "on"
    ns = {"h": "https://hpcvirt.dev/xmlns/regime/1"}
    assert root.find("metadata/h:regime/h:placement", ns).attrib == {"mode": "dedicated", "partition": "p0"}
    assert root.find("metadata/h:regime/h:addresses", ns).get("net0") == "10.9.0.98"


def test_libvirt_additions_are_not_differences():
    assert compare(owned_view(build_domain_xml(DEDICATED)), owned_view(fixture("dedicated-libvirt.xml"))) == []
    # ... but what the VSE owns is: a libvirt answer with another pin is a difference
    moved = fixture("dedicated-libvirt.xml").replace("<vcpupin vcpu='0' cpuset='1'/>", "<vcpupin vcpu='0' cpuset='0'/>")
    assert moved != fixture("dedicated-libvirt.xml")
    assert compare(owned_view(build_domain_xml(DEDICATED)), owned_view(moved)) == [
        ("cputune.vcpupin", {"0": "0"}, {"0": "1"})]


def test_metadata_round_trips_for_node_info():
    meta = metadata_from_domain_xml(fixture("dedicated-libvirt.xml"))
    assert meta["placement"] == {"mode": "dedicated", "partition": "p0"}
    assert meta["vse"]["layers"] == "vendor"
    parsed = parse_domain_xml(fixture("dedicated-libvirt.xml"))
    assert parsed["memory_backing"]["locked"] is True
    assert parsed["memory_backing"]["hugepages"][0]["size"] == "2048"
    partitions = {"p0": {"cpus": "1"}}
    assert classify_placement([{1}], partitions, frozenset({0})) == ("dedicated", "p0")


def test_shared_xml_reads_back_as_the_fields_it_was_built_from():
    view = owned_view(build_domain_xml(resolved()))
    assert view == {
        "domain_type": "qemu", "name": "g1", "memory_kib": 262144, "hugepages_kib": None, "locked": False,
        "vcpus": 2, "vcpu_cpuset": None,
        "os": {"kernel": "/img/k", "initrd": "/img/i", "cmdline": "console=ttyS0", "boot_dev": None},
        "cputune": {"shares": 512, "period": None, "quota": None, "global_period": None, "global_quota": None,
                    "vcpupin": {}, "emulatorpin": None},
        "memtune": {"hard_limit": None, "soft_limit": None},
        "numatune": {},
        "disks": [{"dev": "vda", "bus": "virtio", "path": "/img/g1-vda.qcow2", "format": "qcow2", "readonly": False}],
        "interfaces": [{"type": "network", "source": "default", "mac": "52:54:00:00:00:01", "model": "virtio"}],
        "console_path": "/var/lib/hpcvirt/console/g1.log",
        "metadata": {"vse": {"name": "g1", "digest": "abc", "layers": "a,b"}, "placement": {"mode": "shared"}},
    }


def test_changes_are_listed_with_current_and_desired_values():
    view = owned_view(build_domain_xml(resolved()))
    changed = owned_view(build_domain_xml(resolved(cputune={"shares": 256}, vcpus=4)))
    diff = compare(changed, view)
    assert sorted(diff) == [("cputune.shares", 512, 256), ("vcpus", 2, 4)]
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
