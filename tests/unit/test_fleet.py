"""Unit tests of the fleet: patterns, members' specs, journal lists, removal order, and the plans it makes."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _fleet as fleet
from ansible_collections.hpcvirt.regime.plugins.module_utils._address import AddressError, range_addresses
from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import merge_layers

BASE = {"domain_type": "qemu", "memory": 128,
        "disks": [{"dev": "vda", "master": "/images/m.qcow2"}],
        "networks": [{"name": "net0", "type": "user", "ip_range": "10.0.0.0/24"}]}


def test_pattern_ranges_padding_letters_and_products():
    assert fleet.expand_pattern("job42-[001:003]") == ["job42-001", "job42-002", "job42-003"]
    assert fleet.expand_pattern("n[1:10:4]") == ["n1", "n5", "n9"]
    assert fleet.expand_pattern("r[a:b]-[1:2]") == ["ra-1", "ra-2", "rb-1", "rb-2"]
    assert fleet.expand_pattern("solo, a-[8:10]") == ["solo", "a-8", "a-9", "a-10"]


@pytest.mark.parametrize("pattern,needle", [
    ("a[1:3],a2", "yields the name 'a2' twice"),
    ("a[1:11][1:11]", "yields the name 'a111' twice"),
    ("a[3:1]", "runs backwards"),
    ("a[1-3]", "is not a range"),
    ("a[1:3", "unbalanced brackets"),
    ("a,,b", "empty term"),
    ("a[1:9999]", "more than"),
])
def test_bad_patterns_name_the_problem(pattern, needle):
    with pytest.raises(fleet.FleetError, match=needle.replace("[", r"\[")):
        fleet.expand_pattern(pattern)


def test_member_names_count_and_default_pattern():
    assert fleet.member_names("job", count=2) == ["job-001", "job-002"]
    assert fleet.member_names("job", "x[1:5]", 2) == ["x1", "x2"]
    with pytest.raises(fleet.FleetError, match="count: 0 members"):
        fleet.member_names("job", count=0)
    with pytest.raises(fleet.FleetError, match="yields only 5"):
        fleet.member_names("job", "x[1:5]", 6)
    with pytest.raises(fleet.FleetError, match="give count or pattern"):
        fleet.member_names("job")
    with pytest.raises(fleet.FleetError, match="not a domain name"):
        fleet.member_names("job", "bad name[1:2]")


def test_range_addresses_in_order_and_too_small():
    assert range_addresses("10.0.0.0/29", 3) == (["10.0.0.1", "10.0.0.2", "10.0.0.3"], 29)
    assert range_addresses("10.0.0.10-10.0.0.11", 2) == (["10.0.0.10", "10.0.0.11"], None)
    with pytest.raises(AddressError, match="holds 2 addresses, 3 members"):
        range_addresses("10.0.0.10-10.0.0.11", 3)


def test_member_specs_addresses_hostnames_and_overrides():
    names = ["m1", "m2", "m3"]
    specs = fleet.member_specs("f", BASE, names, "h[1:3]", {"net0": "10.1.0.0/24"}, {"m2": {"memory": 256}})
    assert [s["networks"][0]["ip"] for s in specs] == ["10.1.0.1/24", "10.1.0.2/24", "10.1.0.3/24"]
    assert all("ip_range" not in s["networks"][0] for s in specs)
    assert [s["networks"][0]["hostname"] for s in specs] == ["h1", "h2", "h3"]
    assert [s["memory"] for s in specs] == [128, 256, 128]
    assert BASE["networks"][0]["ip_range"] == "10.0.0.0/24"          # the base spec is not changed


@pytest.mark.parametrize("kwargs,needle", [
    ({"hostnames": "h[1:2]"}, "hostnames: 'h\\[1:2\\]' yields 2 hostnames, the fleet has 3"),
    ({"ranges": {"net9": "10.0.0.0/24"}}, "addresses.net9: the VSE has no network"),
    ({"ranges": {"net0": "10.0.0.1-10.0.0.2"}}, "addresses.net0: address range"),
    ({"overrides": {"m9": {}}}, "overrides: 'm9' is not a member"),
    ({"overrides": {"m2": {"memroy": 1}}}, "member m2: layer 'overrides.m2': unknown key 'memroy'"),
    ({"overrides": {"m3": {"memory": 32}}}, "member m3: memory: 32 MiB"),
])
def test_member_spec_errors_name_field_or_member(kwargs, needle):
    with pytest.raises(fleet.FleetError, match=needle):
        fleet.member_specs("f", BASE, ["m1", "m2", "m3"], **kwargs)


def test_layers_merge_like_vse():
    base, _provenance = merge_layers([{"name": "v", "spec": BASE}, {"name": "s", "spec": {"memory": 192}}])
    assert fleet.member_specs("f", base, ["a"])[0]["memory"] == 192


def guest(name, fleet_name=None, index=0, active=False, **hpcvirt):
    """A guest as _node.read_guest reports it (the fields the fleet reads)."""
    meta = dict(hpcvirt)
    if fleet_name:
        meta["fleet"] = {"name": fleet_name, "index": str(index)}
    return {"name": name, "active": active, "state": "running" if active else "shutoff",
            "vcpus": {"current": 1, "maximum": 1}, "vcpu_pins": {"0": "0-1"}, "hpcvirt": meta}


class Node:
    """The NodeState fields the fleet planner reads."""

    def __init__(self, guests=(), root="/", conn=None, available_mib=4096):
        self.guests, self.domains, self.root, self.conn = list(guests), {}, root, conn
        self.layout = {"housekeeping": "0", "pool": "0-1", "partitions": []}
        self.topology = Topology(available_mib)

    def guest(self, name):
        return next((g for g in self.guests if g["name"] == name), None)


class Topology:
    def __init__(self, available_mib, hugepages=None):
        self.mem_available_kb = available_mib * 1024
        self.hugepages = hugepages or {}
        self.nodes, self.online = {0: None}, frozenset({0, 1})

    def nodes_of(self, cpus):
        return frozenset({0}) if cpus else frozenset()


def test_removals_highest_first_and_force_for_running():
    node = Node([guest("f-1", "f", 1), guest("f-2", "f", 2), guest("f-3", "f", 3), guest("other"), guest("g-9", "g", 9)])
    assert [g["name"] for g in fleet.removals("f", ["f-1"], node, force=False)] == ["f-3", "f-2"]
    node.guest("f-3")["active"] = True
    with pytest.raises(fleet.FleetError, match="f-3 are running"):
        fleet.removals("f", ["f-1"], node, force=False)
    assert [g["name"] for g in fleet.removals("f", [], node, force=True)] == ["f-3", "f-2", "f-1"]


def test_wanted_running_and_batches():
    members = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert fleet.wanted_running(members, 2) == {"a", "b"}
    assert fleet.wanted_running(members, -1) == {"a", "b", "c"}
    assert fleet.wanted_running(members, 0) == set()
    assert list(fleet.batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]


def test_journal_lists_of_an_adopted_run_keep_the_oldest_definitions():
    older = dict(fleet.empty_lists(), overlays=["/p/a"], domains=["a"], redefined={"x": "<old/>"})
    newer = dict(fleet.empty_lists(), overlays=["/p/b"], redefined={"x": "<newer/>", "y": "<y/>"})
    merged = fleet.merge_lists(older, newer)
    assert merged["overlays"] == ["/p/a", "/p/b"] and merged["domains"] == ["a"]
    assert merged["redefined"] == {"x": "<old/>", "y": "<y/>"}      # the oldest definition is what to restore


def test_memory_admission_names_the_shortfall():
    members = [{"resolved": {"memory_kib": 512 * 1024}} for _unused in range(3)]
    fleet.check_memory(members[:1], Topology(1024))
    with pytest.raises(fleet.FleetError, match="needs 1728 MiB .* 1024 MiB available: short by 704 MiB"):
        fleet.check_memory(members, Topology(1024))
    pages = [{"resolved": {"memory_kib": 256 * 1024, "hugepages_kib": 2048}}]

    class Pool:
        free = 100
    with pytest.raises(fleet.FleetError, match="need 128 hugepages of 2048 KiB, 100 are free: short by 28"):
        fleet.check_memory(pages, Topology(1024, {2048: Pool()}))


# --------------------------------------------------------------------------------------------
# The composition: plan_fleet on a node, and the roll-back plan of a journal

import libvirt  # noqa: E402

from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings  # noqa: E402


class Dom:
    def __init__(self, name, active=False):
        self.name, self.active = name, active

    def isActive(self):
        return self.active


class Conn:
    """What the planner asks libvirt: pools (none), and which domains exist."""

    def __init__(self, domains=()):
        self.domains = {d.name: d for d in domains}

    def listAllStoragePools(self, flags):
        return []

    def storagePoolLookupByName(self, name):
        raise libvirt.libvirtError("no pool %s" % name)

    def lookupByName(self, name):
        if name not in self.domains:
            raise libvirt.libvirtError("no domain %s" % name)
        return self.domains[name]


@pytest.fixture
def images(tmp_path):
    for name in ("k", "i", "m.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def fleet_params(images, **extra):
    params = {"name": "f", "state": "present", "pattern": None, "count": 3, "layers": [], "addresses": {},
              "hostnames": None, "overrides": {}, "start": 1, "start_concurrency": 2, "batch_size": 1,
              "force": False, "lock_timeout": 10,
              "vse": {"domain_type": "qemu", "memory": 128,
                      "boot": {"kernel": str(images / "k"), "initrd": str(images / "i")},
                      "disks": [{"dev": "vda", "master": str(images / "m.qcow2"), "pool_dir": str(images / "pool")}],
                      "networks": [{"name": "net0", "type": "user"}]}}
    params.update(extra)
    return params


def test_a_new_fleet_is_planned_in_batches_and_its_journal_lists_everything_it_creates(images):
    node = Node(root=str(images), conn=Conn())
    run = fleet.plan_fleet(node, fleet_params(images), libvirt, Timings())
    assert [step.action.name for step in run.plan] == (["create_pool"] + ["create_overlays"] * 3 + ["define"] * 3
                                                       + ["start"])
    assert [step.target for step in run.plan.of(fleet.DEFINE)] == ["f-001", "f-002", "f-003"]
    pool = str(images / "pool")
    assert run.lists["pools"] == [pool] and run.lists["directories"] == [pool]
    assert run.lists["overlays"] == [pool + "/f-00%d-vda.qcow2" % i for i in (1, 2, 3)]
    assert run.lists["domains"] == ["f-001", "f-002", "f-003"] and run.lists["started_members"] == ["f-001"]
    assert fleet.report(run)["counts"] == {"create": 3, "update": 0, "keep": 0, "remove": 0, "start": 1}
    # check mode: nothing written anywhere, not even the journal directory
    with fleet.node_lock(node, run.params, check_mode=True):
        fleet.apply(run, True, Timings())
    assert not (images / "var").exists() and not (images / "pool").exists()


def test_batches_group_members(images):
    run = fleet.plan_fleet(Node(root=str(images), conn=Conn()), fleet_params(images, batch_size=2, start=-1),
                           libvirt, Timings())
    defines = run.plan.of(fleet.DEFINE)
    assert [step.detail["members"] for step in defines] == [["f-001", "f-002"], ["f-003"]]
    assert defines[0].target == "f-001 .. f-002"
    assert [step.detail["concurrency"] for step in run.plan.of(fleet.START)] == [2, 2]


def test_bad_options_name_the_field(images):
    with pytest.raises(fleet.FleetError, match="batch_size: 0 is outside 1..1000"):
        fleet.plan_fleet(Node(root=str(images), conn=Conn()), fleet_params(images, batch_size=0), libvirt, Timings())
    with pytest.raises(fleet.FleetError, match="name: 'a/b' is not a fleet name"):
        fleet.plan_fleet(Node(root=str(images), conn=Conn()), fleet_params(images, name="a/b"), libvirt, Timings())


def test_an_interrupted_run_whose_request_no_longer_validates_is_rolled_back_exactly(images):
    journal_dir = images / "var/lib/hpcvirt/journal"
    journal_dir.mkdir(parents=True)
    overlay = images / "pool" / "f-002-vda.qcow2"
    overlay.parent.mkdir()
    overlay.write_bytes(b"QFI")
    data = dict(fleet.empty_lists(), started_at="t0", overlays=[str(overlay), str(images / "pool/f-003-vda.qcow2")],
                domains=["f-002", "f-003"], started_members=["f-001", "f-002"], redefined={"f-001": "<old/>"})
    (journal_dir / "fleet-f.json").write_text(__import__("json").dumps(data))
    conn = Conn([Dom("f-001", active=True), Dom("f-002", active=True), Dom("bystander", active=True)])
    run = fleet.plan_fleet(Node(root=str(images), conn=conn), fleet_params(images, hostnames="h[1:2]"), libvirt,
                           Timings())
    assert run.error.startswith("hostnames:")
    steps = [(step.action.name, step.detail.get("members") or step.detail.get("paths")) for step in run.plan]
    assert steps == [("rollback_interrupted_run", None),
                     ("rollback_stop", ["f-001"]),                 # started by it, defined before it: stopped
                     ("rollback_undefine", ["f-002"]),              # defined by it (f-003 never was)
                     ("rollback_restore", ["f-001"]),
                     ("rollback_delete_overlays", [str(overlay)])]
    with pytest.raises(fleet.FleetError, match="hostnames: .*journal .* was left for a real run"):
        fleet.apply(run, True, Timings())
    assert (journal_dir / "fleet-f.json").exists()
