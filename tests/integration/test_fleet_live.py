"""The fleet module on the real local libvirtd: 50 members, idempotence, shrink and grow, real faults
(a define libvirt refuses part-way, a pool that fills up part-way, SIGKILL part-way), bad inputs."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import libvirt
import pytest

import testbed
from conftest import ROOT, run_module, run_playbook

IMAGES = testbed.IMAGE_DIR
PREFIX = "hpcvirt-fleet-"
POOL = "hpcvirt-fleet-itest"
POOL_DIR = "/var/lib/hpcvirt/fleet-itest"
JOURNAL_DIR = "/var/lib/hpcvirt/journal"
TMPFS_DIR = "/var/lib/hpcvirt/fleet-tmpfs-itest"


def vendor(pool=POOL, pool_dir=POOL_DIR):
    return {"name": "vendor", "spec": {
        "domain_type": "qemu", "memory": 128, "vcpus": 1,
        "boot": {"kernel": IMAGES + "/hpcvirt-tiny.vmlinuz", "initrd": IMAGES + "/hpcvirt-tiny.initrd",
                 "cmdline": "console=ttyS0 quiet hpcvirt.hostname={hostname} hpcvirt.ip={ip} hpcvirt.hb_ms=500"},
        "disks": [{"dev": "vda", "master": IMAGES + "/hpcvirt-tiny.qcow2", "pool": pool, "pool_dir": pool_dir}],
        "networks": [{"name": "net0", "type": "user"}],
        "placement": {"mode": "shared", "cpu_shares": 256}}}


def fleet_args(fleet, count, **extra):
    args = {"name": fleet, "pattern": fleet + "-[001:200]", "count": count, "layers": [vendor()],
            "addresses": {"net0": "10.79.0.0/24"}, "hostnames": "n[001:200]"}
    args.update(extra)
    return args


def fleet_domains(conn, fleet):
    return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(fleet + "-"))


def overlays(fleet, directory=POOL_DIR):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, fleet + "-*")))


def journal(fleet):
    return os.path.join(JOURNAL_DIR, "fleet-%s.json" % fleet)


POOL_FIELDS = {"vcpu_cpuset", "cputune.emulatorpin"}


def changes(result):
    """The plan's steps, less redefinitions that only follow the shared pool: other developers'
    partition tests change this node's layout (and with it the pool) while these tests run."""
    return [step for step in result["plan"]
            if not (step["action"] == "redefine" and all(set(after) <= POOL_FIELDS for after in step["after"].values()))]


def members_of(steps):
    """Member names of batched steps, in plan order."""
    return [name for step in steps for name in step["members"]]


def remove_everything(conn, fleet):
    for name in fleet_domains(conn, fleet):
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    for directory in (POOL_DIR, TMPFS_DIR):
        for path in glob.glob(os.path.join(directory, fleet + "-*")):
            os.unlink(path)
    if os.path.exists(journal(fleet)):
        os.unlink(journal(fleet))


@pytest.fixture
def fleet(conn):
    name = PREFIX + uuid.uuid4().hex[:5]
    yield name
    remove_everything(conn, name)


@pytest.fixture(scope="module", autouse=True)
def pool_cleanup():
    yield
    conn = libvirt.open("qemu:///system")
    testbed.remove_empty_pool(conn, POOL + "-tmpfs")
    testbed.remove_empty_pool(conn, POOL, POOL_DIR)
    conn.close()


def pin_to_cpu0(conn, name):
    """Started test guests stay off partition CPUs (other developers drop guests into CPU 1)."""
    dom = conn.lookupByName(name)
    ncpus = conn.getCPUMap()[0]
    dom.pinVcpuFlags(0, tuple(cpu == 0 for cpu in range(ncpus)), libvirt.VIR_DOMAIN_AFFECT_LIVE)


def spawn_module(args):
    """The module as a real process of its own (the node-side program Ansible would run), to signal it."""
    path = os.path.join(ROOT, ".build", "tmp", "fleet-args-%s.json" % uuid.uuid4().hex[:8])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))
    proc = subprocess.Popen([sys.executable, "-m", "ansible_collections.hpcvirt.regime.plugins.modules.fleet", path],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, path


def wait_for_progress(proc, fleet, key, at_least, timeout=120):
    """Poll the run's journal until ``progress[key] >= at_least``; the module must still be running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(journal(fleet)) as handle:
                if (json.load(handle).get("progress") or {}).get(key, 0) >= at_least:
                    return
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, "the module ended before the fault could be injected: %s" % (proc.communicate(),)
        time.sleep(0.001)
    raise AssertionError("journal of %s never reached %s >= %d" % (fleet, key, at_least))


def test_fifty_members_converge_shrink_and_grow(conn, fleet):
    args = fleet_args(fleet, 50)
    check = run_module("hpcvirt.regime.fleet", args, check=True)
    assert check["changed"] and check["counts"]["create"] == 50 and fleet_domains(conn, fleet) == []

    first = run_module("hpcvirt.regime.fleet", args)
    assert first["changed"] and first["counts"] == {"create": 50, "update": 0, "keep": 0, "remove": 0, "start": 0}, first
    assert {"validate", "overlays", "define"} <= set(first["timings"]) and "start" not in first["timings"]
    assert [s["action"] for s in first["plan"]].count("define") == 1     # one batch of 50
    names = ["%s-%03d" % (fleet, i) for i in range(1, 51)]
    assert fleet_domains(conn, fleet) == names
    member = first["members"][6]
    assert member["name"] == names[6] and member["addresses"] == {"net0": "10.79.0.7"} and member["hostname"] == "n007"
    vol = conn.storageVolLookupByPath(os.path.join(POOL_DIR, names[6] + "-vda.qcow2"))
    assert IMAGES + "/hpcvirt-tiny.qcow2" in vol.XMLDesc(0)                 # an overlay, not a copy
    xml = conn.lookupByName(names[6]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "hpcvirt.hostname=n007 hpcvirt.ip=10.79.0.7/24" in xml and 'name="%s"' % fleet in xml
    assert not os.path.exists(journal(fleet))

    again = run_module("hpcvirt.regime.fleet", args)
    assert changes(again) == [] and again["counts"]["create"] == again["counts"]["remove"] == 0

    shrunk = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 40))
    assert shrunk["changed"] and members_of(changes(shrunk)) == names[40:][::-1], shrunk["plan"]   # highest first
    assert fleet_domains(conn, fleet) == names[:40] and len(overlays(fleet)) == 40

    grown = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 45))
    assert grown["changed"] and grown["counts"]["create"] == 5 and grown["counts"]["remove"] == 0
    assert fleet_domains(conn, fleet) == names[:45] and len(overlays(fleet)) == 45
    converged = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 45))
    assert changes(converged) == [], converged["plan"]

    gone = run_module("hpcvirt.regime.fleet", {"name": fleet, "state": "absent"})
    assert gone["changed"] and gone["counts"]["remove"] == 45
    assert fleet_domains(conn, fleet) == [] and overlays(fleet) == []


def test_start_members_with_a_concurrency_limit_and_force_to_remove(conn, fleet):
    args = fleet_args(fleet, 4, start=2, start_concurrency=2)
    result = run_module("hpcvirt.regime.fleet", args)
    assert result["changed"] and result["counts"]["start"] == 2, result
    running = [m["name"] for m in result["members"] if m["state"] == "running"]
    for name in running:
        pin_to_cpu0(conn, name)
    assert running == ["%s-001" % fleet, "%s-002" % fleet]
    assert changes(run_module("hpcvirt.regime.fleet", args)) == []

    refused = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 1))
    assert refused["failed"] and "force=true" in refused["msg"] and "%s-002" % fleet in refused["msg"]
    assert len(fleet_domains(conn, fleet)) == 4
    removed = run_module("hpcvirt.regime.fleet", {"name": fleet, "state": "absent", "force": True})
    assert removed["changed"] and fleet_domains(conn, fleet) == [] and overlays(fleet) == []


def test_define_refused_part_way_rolls_back_exactly_this_run(conn, fleet):
    bystander = fleet + "-bystander"
    conn.defineXML("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>" % bystander)
    assert run_module("hpcvirt.regime.fleet", fleet_args(fleet, 10))["changed"]
    before = {name: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for name in fleet_domains(conn, fleet)}
    files_before = overlays(fleet)

    # libvirt refuses member 17's definition (more vCPUs than the machine type allows), after the
    # overlays of members 11-30 and the domains of 11-16 exist; member 3 is being redefined too.
    bad = fleet_args(fleet, 30, batch_size=4, overrides={"%s-017" % fleet: {"vcpus": 300}, "%s-003" % fleet: {"memory": 160}})
    result = run_module("hpcvirt.regime.fleet", bad)
    assert result["failed"] and result["member"] == "%s-017" % fleet, result
    assert "member %s-017 (define)" % fleet in result["msg"] and "machine type limit" in result["msg"]
    assert "6 domains undefined" in result["msg"] and "20 overlays deleted" in result["msg"]
    assert "definitions restored" in result["msg"]
    after = {name: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for name in fleet_domains(conn, fleet)}
    assert after == before                                   # older members untouched, member 3 restored
    assert overlays(fleet) == files_before and not os.path.exists(journal(fleet))


@pytest.fixture
def tmpfs_dir():
    os.makedirs(TMPFS_DIR, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "hpcvirt-fleet-itest", TMPFS_DIR], check=True)
    yield TMPFS_DIR
    conn = libvirt.open("qemu:///system")
    try:
        pool = conn.storagePoolLookupByName(POOL + "-tmpfs")
        if pool.isActive():
            pool.destroy()
        pool.undefine()
    except libvirt.libvirtError:
        pass
    conn.close()
    subprocess.run(["umount", TMPFS_DIR], check=True)
    os.rmdir(TMPFS_DIR)


def test_pool_filling_up_part_way_rolls_back_and_removes_the_pool(conn, fleet, tmpfs_dir):
    pool_dir = os.path.join(tmpfs_dir, "pool")   # the filler goes beside the pool, on the same filesystem
    args = fleet_args(fleet, 40, batch_size=2, layers=[vendor(POOL + "-tmpfs", pool_dir)])
    proc, path = spawn_module(args)
    wait_for_progress(proc, fleet, "overlays", 4)
    os.kill(proc.pid, signal.SIGSTOP)            # freeze the run while another writer fills the disk
    try:
        with open(os.path.join(tmpfs_dir, fleet + "-filler"), "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * (1 << 20))
                    handle.flush()
            except OSError:
                pass
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, _err = proc.communicate(timeout=300)
    os.unlink(path)
    os.unlink(os.path.join(tmpfs_dir, fleet + "-filler"))
    result = json.loads(out)
    assert result["failed"] and "create overlay" in result["msg"], result
    assert "pools removed" in result["msg"] and "overlays deleted" in result["msg"]
    assert fleet_domains(conn, fleet) == [] and not os.path.exists(pool_dir) and os.listdir(tmpfs_dir) == []
    assert POOL + "-tmpfs" not in [p.name() for p in conn.listAllStoragePools()]
    assert not os.path.exists(journal(fleet))


def test_sigkill_part_way_then_the_next_run_completes_or_rolls_back(conn, fleet):
    names = ["%s-%03d" % (fleet, i) for i in range(1, 61)]
    # a killed first run, completed by the next run of the same request
    proc, path = spawn_module(fleet_args(fleet, 40, batch_size=2))
    wait_for_progress(proc, fleet, "overlays", 10)
    proc.kill()
    proc.wait()
    os.unlink(path)
    assert os.path.exists(journal(fleet)) and 10 <= len(overlays(fleet)) < 40
    completed = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 40))
    assert completed["changed"] and completed["recovered"]["action"] == "completed", completed
    assert fleet_domains(conn, fleet) == names[:40] and len(overlays(fleet)) == 40
    assert not os.path.exists(journal(fleet))
    assert changes(run_module("hpcvirt.regime.fleet", fleet_args(fleet, 40))) == []

    # a killed growth, rolled back by a next run that no longer validates; the first 40 stay
    before = {name: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for name in names[:40]}
    proc, path = spawn_module(fleet_args(fleet, 60, batch_size=2))
    wait_for_progress(proc, fleet, "defined", 4)
    proc.kill()
    proc.wait()
    os.unlink(path)
    assert 40 < len(fleet_domains(conn, fleet)) < 60
    invalid = run_module("hpcvirt.regime.fleet", fleet_args(fleet, 60, hostnames="n[1:10]"))
    assert invalid["failed"] and "hostnames" in invalid["msg"] and "rolled back" in invalid["msg"], invalid
    assert fleet_domains(conn, fleet) == names[:40] and len(overlays(fleet)) == 40
    assert {name: conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) for name in names[:40]} == before
    assert not os.path.exists(journal(fleet))


def harness(args, kill_after):
    """The module under tests/integration/kill_harness.py: SIGKILLed after its kill_after-th step."""
    path = os.path.join(ROOT, ".build", "tmp", "fleet-kill-%s.json" % uuid.uuid4().hex[:8])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    try:
        return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "integration", "kill_harness.py"), "fleet",
                               str(kill_after), path], capture_output=True, text=True, timeout=300, check=False)
    finally:
        os.unlink(path)


def test_sigkill_after_every_step_then_the_next_run_converges(conn, fleet):
    """A 3-member fleet grown from 1 member (batch size 1, so one step per member and action),
    killed after each step in turn; the next run completes it (odd k) or, with a request that no
    longer validates, rolls it back exactly (even k). The bystander guest and its disk, and the
    member that existed before, are never lost."""
    bystander = "bystander-" + fleet       # not a name fleet_domains() counts
    disk = os.path.join(POOL_DIR, "bystander-%s.img" % fleet)
    base_args = fleet_args(fleet, 1)
    assert run_module("hpcvirt.regime.fleet", base_args)["changed"]
    with open(disk, "wb") as handle:
        handle.write(b"bystander data")
    conn.defineXML("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory>"
                   "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>"
                   "<source file='%s'/><target dev='vda'/></disk></devices></domain>" % (bystander, disk))
    names = ["%s-%03d" % (fleet, i) for i in (1, 2, 3)]
    base_xml = conn.lookupByName(names[0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    base_files = overlays(fleet)
    grow = fleet_args(fleet, 3, start=2, batch_size=1, overrides={names[0]: {"memory": 160}})
    try:
        plan = run_module("hpcvirt.regime.fleet", grow, check=True)["plan"]
        assert [s["action"] for s in plan] == (["create_overlays"] * 2 + ["redefine"] + ["define"] * 2
                                               + ["start"] * 2), plan
        for k in range(1, len(plan) + 1):
            killed = harness(grow, k)
            assert killed.returncode == -signal.SIGKILL, (k, killed.stdout, killed.stderr)
            assert os.path.exists(journal(fleet)), k                 # the interrupted run's record
            if k % 2:
                done = run_module("hpcvirt.regime.fleet", grow)
                assert not done.get("failed") and done["recovered"]["action"] == "completed", (k, done)
                assert fleet_domains(conn, fleet) == names and len(overlays(fleet)) == 3
                assert [conn.lookupByName(n).isActive() for n in names] == [1, 1, 0], k
                assert changes(run_module("hpcvirt.regime.fleet", grow)) == [], k
            else:
                undone = run_module("hpcvirt.regime.fleet", dict(grow, hostnames="n[1:2]"))
                assert undone["failed"] and "hostnames" in undone["msg"] and "rolled back" in undone["msg"], (k, undone)
                assert fleet_domains(conn, fleet) == [names[0]] and overlays(fleet) == base_files, k
                assert conn.lookupByName(names[0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == base_xml, k
                assert not conn.lookupByName(names[0]).isActive(), k
            assert not os.path.exists(journal(fleet)), k
            assert bystander in conn.listDefinedDomains() and open(disk, "rb").read() == b"bystander data", k
            # back to the one-member fleet for the next k
            for name in names:
                if name in fleet_domains(conn, fleet) and conn.lookupByName(name).isActive():
                    conn.lookupByName(name).destroy()
            reset = run_module("hpcvirt.regime.fleet", dict(base_args, force=True))
            assert not reset.get("failed"), reset
            assert conn.lookupByName(names[0]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == base_xml
            assert overlays(fleet) == base_files
    finally:
        conn.lookupByName(bystander).undefine()
        os.unlink(disk)


@pytest.mark.parametrize("case,needle", [
    ("duplicates", "yields the name"),
    ("short_range", "addresses.net0: address range 10.79.0.10-10.79.0.12 holds 3 addresses, 5 members"),
    ("short_pattern", "count: 5 members asked for, but pattern"),
    ("missing_master", "master image /var/lib/hpcvirt/images/hpcvirt-fleet-none.qcow2 does not exist"),
    ("count_zero", "count: 0 members is not a fleet"),
    ("volume_exists", "already exists and this fleet did not create it"),
    ("memory", "short by"),
])
def test_bad_input_is_refused_and_creates_nothing(conn, fleet, case, needle):
    args = fleet_args(fleet, 5)
    squatter = os.path.join(POOL_DIR, "%s-004-vda.qcow2" % fleet)
    if case == "duplicates":
        args["pattern"] = "%s-[1:3],%s-2" % (fleet, fleet)
        args.pop("count")
    elif case == "short_range":
        args["addresses"] = {"net0": "10.79.0.10-10.79.0.12"}
    elif case == "short_pattern":
        args["pattern"] = fleet + "-[1:4]"
    elif case == "missing_master":
        args["layers"][0]["spec"]["disks"][0]["master"] = IMAGES + "/hpcvirt-fleet-none.qcow2"
    elif case == "count_zero":
        args["count"] = 0
    elif case == "volume_exists":
        os.makedirs(POOL_DIR, exist_ok=True)
        with open(squatter, "wb") as handle:
            handle.write(b"not ours")
    elif case == "memory":
        args.update(start=2, overrides={"%s-002" % fleet: {"memory": 16 * 1024 * 1024}})
    result = run_module("hpcvirt.regime.fleet", args)
    assert result["failed"] and needle in result["msg"], result["msg"]
    assert fleet_domains(conn, fleet) == []
    if case == "volume_exists":
        assert "member %s-004" % fleet in result["msg"]
        with open(squatter, "rb") as handle:
            assert handle.read() == b"not ours"                 # left untouched
        os.unlink(squatter)
    assert overlays(fleet) == [] and not os.path.exists(journal(fleet))


def test_provision_playbook_takes_a_fleet_from_the_inventory_variables(conn, fleet):
    fleets = {"vse_instances": [], "vse_fleets": [{"name": fleet, "count": 3, "addresses": {"net0": "10.77.3.0/24"}}]}
    first = run_playbook("playbooks/provision.yml", extra_vars=fleets)
    assert first.returncode == 0, first.stdout + first.stderr
    assert fleet_domains(conn, fleet) == ["%s-001" % fleet, "%s-002" % fleet, "%s-003" % fleet]
    assert "fleet %s:" % fleet in first.stdout      # the playbook's summary of the fleet
    second = run_playbook("playbooks/provision.yml", extra_vars=fleets)
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout
    gone = run_playbook("playbooks/provision.yml", "-e", "vse_state=absent", extra_vars=fleets)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert fleet_domains(conn, fleet) == []
