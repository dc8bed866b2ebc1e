"""The vse module on the real local libvirtd: overlays, boot, live and persistent changes, refusals."""

import os
import uuid

import libvirt
import pytest

import testbed
from conftest import run_module

IMAGES = testbed.IMAGE_DIR
POOL = "hpcvirt-vse-itest"
POOL_DIR = "/var/lib/hpcvirt/vse-itest"


def layers(**site):
    vendor = {"domain_type": "qemu", "memory": 128, "vcpus": 1,
              "boot": {"kernel": IMAGES + "/hpcvirt-tiny.vmlinuz", "initrd": IMAGES + "/hpcvirt-tiny.initrd",
                       "cmdline": "console=ttyS0 quiet hpcvirt.hostname={hostname} hpcvirt.hb_ms=200"},
              "disks": [{"dev": "vda", "master": IMAGES + "/hpcvirt-tiny.qcow2", "pool": POOL, "pool_dir": POOL_DIR}]}
    base = {"networks": [{"name": "net0", "type": "user", "ip_range": "10.78.0.0/24"}],
            "placement": {"mode": "shared", "cpu_shares": 512}}
    base.update(site)
    return [{"name": "vendor", "spec": vendor}, {"name": "site", "spec": base}]


def console(name):
    return "/var/lib/hpcvirt/console/%s.log" % name


def read_beats(name):
    try:
        with open(console(name), errors="replace") as handle:
            return testbed.parse_beats(handle.read())
    except FileNotFoundError:
        return []


def wait_beat(name, timeout=90):
    import time
    start = len(read_beats(name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = read_beats(name)
        if len(beats) > start:
            return beats[-1]
        time.sleep(0.2)
    raise AssertionError("no heartbeat from %s within %ss" % (name, timeout))


@pytest.fixture
def names(conn):
    made = []

    def make():
        name = "hpcvirt-vse-%s" % uuid.uuid4().hex[:6]
        made.append(name)
        return name

    yield make
    for name in made:
        run_module("hpcvirt.regime.vse", {"name": name, "state": "absent", "force": True})
        testbed.remove(conn, name)   # in case the module could not
        if os.path.exists(console(name)):
            os.unlink(console(name))


@pytest.fixture(scope="module", autouse=True)
def pool_cleanup():
    yield
    conn = libvirt.open("qemu:///system")
    testbed.remove_empty_pool(conn, POOL, POOL_DIR)
    conn.close()


def test_boot_from_overlay_live_and_persistent_changes_and_removal(conn, names):
    name = names()
    args = {"name": name, "state": "running", "layers": layers()}
    check = run_module("hpcvirt.regime.vse", args, check=True)
    assert check["changed"] and [s["action"] for s in check["plan"]][-2:] == ["define", "start"]
    assert testbed.connect().listDefinedDomains().count(name) == 0 and name not in [d.name() for d in conn.listAllDomains()]

    first = run_module("hpcvirt.regime.vse", args)
    assert first["changed"], first
    overlay = first["resolved"]["disks"][0]["path"]
    assert overlay == os.path.join(POOL_DIR, name + "-vda.qcow2")
    vol = conn.storageVolLookupByPath(overlay)
    assert IMAGES + "/hpcvirt-tiny.qcow2" in vol.XMLDesc(0)       # a backing store, not a copy
    beat = wait_beat(name)
    assert beat["src"] == "disk" and beat["host"] == name

    again = run_module("hpcvirt.regime.vse", args, check=True, diff=True)
    assert not again["changed"] and again["plan"] == []
    assert not run_module("hpcvirt.regime.vse", args)["changed"]

    # cpu_shares on the running guest: live and persistent, no restart
    boot_id = beat["boot"]
    args["layers"] = layers(placement={"mode": "shared", "cpu_shares": 256})
    predicted = run_module("hpcvirt.regime.vse", args, check=True, diff=True)
    assert {"define", "set_live"} == {s["action"] for s in predicted["plan"]}
    assert "cputune.shares" in predicted["diff"]["after"]["define %s" % name]
    shares = run_module("hpcvirt.regime.vse", args)
    assert shares["changed"] and not shares["restart_required"]
    dom = conn.lookupByName(name)
    assert dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)["cpu_shares"] == 256
    assert dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)["cpu_shares"] == 256
    assert wait_beat(name)["boot"] == boot_id                      # never restarted
    assert not run_module("hpcvirt.regime.vse", args)["changed"]

    # vcpus on the running guest: persistent only, reported, not restarted
    args["layers"][0]["spec"]["vcpus"] = 2
    pending = run_module("hpcvirt.regime.vse", args)
    assert pending["changed"] and pending["restart_required"] and pending["restart_fields"] == ["vcpus"]
    assert wait_beat(name)["boot"] == boot_id
    assert run_module("hpcvirt.regime.vse", args)["changed"] is False

    # vcpus on a stopped guest
    args.update(state="stopped", stop_mode="destroy")
    assert run_module("hpcvirt.regime.vse", args)["domain_state"] == "shutoff"
    args["layers"][0]["spec"]["vcpus"] = 1
    changed = run_module("hpcvirt.regime.vse", args)
    assert changed["changed"] and not changed["restart_required"]
    assert conn.lookupByName(name).vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM) == 1
    assert not run_module("hpcvirt.regime.vse", args)["changed"]

    # removal deletes the overlay
    gone = run_module("hpcvirt.regime.vse", {"name": name, "state": "absent"})
    assert gone["changed"] and "delete_overlay" in [s["action"] for s in gone["plan"]]
    assert not os.path.exists(overlay)
    assert name not in [d.name() for d in conn.listAllDomains()]


def test_removing_a_running_guest_needs_force(conn, names):
    name = names()
    assert run_module("hpcvirt.regime.vse", {"name": name, "state": "running", "layers": layers()})["changed"]
    refused = run_module("hpcvirt.regime.vse", {"name": name, "state": "absent"})
    assert refused["failed"] and "force=true" in refused["msg"]
    assert conn.lookupByName(name).isActive()
    removed = run_module("hpcvirt.regime.vse", {"name": name, "state": "absent", "force": True, "keep_disks": True})
    assert removed["changed"]
    overlay = os.path.join(POOL_DIR, name + "-vda.qcow2")
    assert os.path.exists(overlay)                                 # keep_disks
    conn.storageVolLookupByPath(overlay).delete(0)


@pytest.mark.parametrize("case,needle", [
    ("unknown_key", "layer 'site': unknown key 'placment'"),
    ("missing_master", "master image /var/lib/hpcvirt/images/no-such.qcow2 does not exist"),
    ("no_partition", "partition 'hpcvirt-vse-nope' does not exist"),
    ("low_memory", "below the 64 MiB"),
])
def test_bad_input_is_refused_and_creates_nothing(conn, names, case, needle):
    name = names()
    lays = layers()
    if case == "unknown_key":
        lays[1]["spec"]["placment"] = {}
    elif case == "missing_master":
        lays[0]["spec"]["disks"][0]["master"] = IMAGES + "/no-such.qcow2"
    elif case == "no_partition":
        lays[1]["spec"]["placement"] = {"mode": "dedicated", "partition": "hpcvirt-vse-nope"}
    elif case == "low_memory":
        lays[0]["spec"]["memory"] = 32
    result = run_module("hpcvirt.regime.vse", {"name": name, "state": "running", "layers": lays})
    assert result["failed"] and needle in result["msg"], result["msg"]
    assert name not in [d.name() for d in conn.listAllDomains()]
    assert not os.path.exists(os.path.join(POOL_DIR, name + "-vda.qcow2"))


def test_a_domain_hpcvirt_did_not_create_is_never_taken_over(conn, names):
    name = names()
    xml = "<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>" % name
    conn.defineXML(xml)
    try:
        result = run_module("hpcvirt.regime.vse", {"name": name, "state": "present", "layers": layers()})
        assert result["failed"] and "already exists and was not created by hpcvirt.regime.vse" in result["msg"]
        result = run_module("hpcvirt.regime.vse", {"name": name, "state": "absent"})
        assert result["failed"] and "refusing to remove it" in result["msg"]
        assert name in conn.listDefinedDomains()
    finally:
        conn.lookupByName(name).undefine()
