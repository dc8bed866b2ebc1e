"""Unit tests of the fleet's pure logic: patterns, members' specs, journal, removal order."""

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


def view(fleet_name, index, active=False):
    meta = {"fleet": {"name": fleet_name, "index": str(index)}} if fleet_name else {}
    return {"view": {"metadata": meta, "cputune": {"vcpupin": {}}}, "active": active, "live": None, "dom": None}


def test_removals_highest_first_and_force_for_running():
    guests = {"f-1": view("f", 1), "f-2": view("f", 2), "f-3": view("f", 3), "other": view(None, 0), "g-9": view("g", 9)}
    assert fleet.removals("f", ["f-1"], guests, force=False) == ["f-3", "f-2"]
    guests["f-3"]["active"] = True
    with pytest.raises(fleet.FleetError, match="f-3 are running"):
        fleet.removals("f", ["f-1"], guests, force=False)
    assert fleet.removals("f", [], guests, force=True) == ["f-3", "f-2", "f-1"]


def test_wanted_running_and_batches():
    members = [{"name": "a"}, {"name": "b"}, {"name": "c"}]
    assert fleet.wanted_running(members, 2) == {"a", "b"}
    assert fleet.wanted_running(members, -1) == {"a", "b", "c"}
    assert fleet.wanted_running(members, 0) == set()
    assert list(fleet.batches([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]


def test_journal_round_trip_inherit_and_remove(tmp_path):
    root = str(tmp_path)
    older = fleet.Journal("f", root)
    older.record(overlays=["/p/a"], domains=["a"], redefined={"x": "<old/>"})
    loaded = fleet.Journal.load("f", root)
    assert loaded.data["overlays"] == ["/p/a"] and loaded.data["redefined"] == {"x": "<old/>"}
    newer = fleet.Journal("f", root)
    newer.record(overlays=["/p/b"], redefined={"x": "<newer/>"})
    newer.inherit(loaded)
    assert newer.data["overlays"] == ["/p/a", "/p/b"] and newer.data["domains"] == ["a"]
    assert newer.data["redefined"] == {"x": "<old/>"}              # the oldest definition is what to restore
    newer.remove()
    assert fleet.Journal.load("f", root) is None


def test_memory_admission_names_the_shortfall(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 4194304 kB\nMemAvailable: 1048576 kB\n")
    members = [{"resolved": {"memory_kib": 512 * 1024}} for _unused in range(3)]
    fleet.check_memory(members[:1], root=str(tmp_path))
    with pytest.raises(fleet.FleetError, match="needs 1728 MiB .* 1024 MiB available: short by 704 MiB"):
        fleet.check_memory(members, root=str(tmp_path))
