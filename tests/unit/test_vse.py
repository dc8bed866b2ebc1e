"""Unit tests of VSE layer merge, provenance, validation and resolution (pure logic)."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import (
    MIN_MEMORY_MIB,
    VseError,
    choose_dedicated_pins,
    digest,
    emulator_cpus,
    merge_layers,
    resolve,
    validate,
)
from ansible_collections.hpcvirt.regime.plugins.filter.vse_merge import vse_merge

IMAGES = "/var/lib/hpcvirt/images"
VENDOR = {"name": "vendor", "spec": {
    "domain_type": "kvm", "vcpus": 1, "memory": 256,
    "boot": {"kernel": IMAGES + "/k", "initrd": IMAGES + "/i", "cmdline": "console=ttyS0 hpcvirt.hostname={hostname}"},
    "disks": [{"dev": "vda", "master": IMAGES + "/m.qcow2"}, {"dev": "vdb", "volume": "/srv/scratch.img", "format": "raw"}],
    "networks": [{"name": "net0", "network": "default"}],
    "allowed_users": ["root"],
}}
SITE = {"name": "site", "spec": {
    "memory": 512,
    "networks+": [{"name": "net0", "ip_range": "10.0.0.0/29"}, {"name": "ib0", "bridge": "br-ib"}],
    "allowed_users+": ["alice"],
    "placement": {"mode": "shared", "cpu_shares": 512},
}}
GROUP = {"name": "group", "spec": {
    "disks-": ["vdb"], "allowed_users-": ["root"], "placement": {"cpu_shares": 256}, "boot": {"cmdline-": None},
}}


def test_later_layers_override_and_dicts_merge():
    spec, _unused = merge_layers([VENDOR, SITE])
    assert spec["memory"] == 512
    assert spec["boot"]["kernel"] == IMAGES + "/k"
    assert spec["placement"] == {"mode": "shared", "cpu_shares": 512}


def test_plain_list_replaces():
    spec, _unused = merge_layers([VENDOR, {"name": "user", "spec": {"allowed_users": ["bob"]}}])
    assert spec["allowed_users"] == ["bob"]


def test_add_merges_keyed_items_and_appends_new_ones():
    spec, _unused = merge_layers([VENDOR, SITE])
    assert spec["networks"] == [
        {"name": "net0", "network": "default", "ip_range": "10.0.0.0/29"},
        {"name": "ib0", "bridge": "br-ib"},
    ]
    assert spec["allowed_users"] == ["root", "alice"]


def test_remove_list_elements_and_keys():
    spec, _unused = merge_layers([VENDOR, SITE, GROUP])
    assert [d["dev"] for d in spec["disks"]] == ["vda"]
    assert spec["allowed_users"] == ["alice"]
    assert "cmdline" not in spec["boot"]
    assert spec["placement"] == {"mode": "shared", "cpu_shares": 256}


def test_remove_whole_key_drops_its_provenance():
    spec, prov = merge_layers([VENDOR, {"name": "user", "spec": {"allowed_users-": None}}])
    assert "allowed_users" not in spec and "allowed_users" not in prov


def test_provenance_records_the_last_layer_per_top_level_key():
    _unused, prov = merge_layers([VENDOR, SITE, GROUP])
    assert prov["domain_type"] == "vendor"
    assert prov["memory"] == "site"
    assert prov["networks"] == "site"
    assert prov["placement"] == "group"
    assert prov["disks"] == "group"


def test_merge_leaves_layers_untouched():
    before = repr(VENDOR)
    merge_layers([VENDOR, SITE, GROUP])
    assert repr(VENDOR) == before


@pytest.mark.parametrize("layer,needle", [
    ({"name": "site", "spec": {"placment": {}}}, "layer 'site': unknown key 'placment'"),
    ({"name": "grp", "spec": {"placement": {"partiton": "p0"}}}, "layer 'grp': unknown key 'placement.partiton'"),
    ({"name": "usr", "spec": {"disks+": [{"dev": "vdc", "mastr": "/x"}]}}, "layer 'usr': unknown key 'disks[0].mastr'"),
    ({"name": "usr", "spec": {"memory+": [1]}}, "applies to lists only"),
])
def test_unknown_keys_name_key_and_layer(layer, needle):
    with pytest.raises(VseError) as err:
        merge_layers([VENDOR, layer])
    assert needle in str(err.value)


def test_duplicate_layer_names_are_refused():
    with pytest.raises(VseError, match="used twice"):
        merge_layers([VENDOR, VENDOR])


def test_filter_plugin_returns_spec_or_provenance():
    assert vse_merge([VENDOR, SITE])["memory"] == 512
    out = vse_merge([VENDOR, SITE], provenance=True)
    assert out["provenance"]["memory"] == "site"


def test_validate_fills_defaults_and_names_bad_fields_with_their_layer():
    spec, prov = merge_layers([VENDOR, SITE])
    full = validate(spec, prov, domain_name="g1")
    assert full["name"] == "g1" and full["placement"]["mode"] == "shared"
    spec, prov = merge_layers([VENDOR, {"name": "user", "spec": {"vcpus": "four"}}])
    with pytest.raises(VseError, match=r"vcpus: expected a int, got 'four' \(set by layer 'user'\)"):
        validate(spec, prov, "g1")


@pytest.mark.parametrize("spec,needle", [
    ({"memory": MIN_MEMORY_MIB - 1}, "below the 64 MiB"),
    ({"domain_type": "xen"}, "domain_type"),
    ({"placement": {"mode": "dedicated"}}, "needs a partition"),
    ({"placement": {"mode": "dedicated", "partition": "p0", "cpu_shares": 10}}, "shared placement only"),
    ({"disks": [{"dev": "vda", "master": "/a", "volume": "/b"}]}, "exactly one of"),
    ({"disks": [{"dev": "vda", "master": "/a"}, {"dev": "vda", "master": "/b"}]}, "used by two disks"),
    ({"networks": [{"name": "n", "network": "x", "bridge": "y"}]}, "give one of"),
    ({"hugepages": "3M"}, "not a hugepage size"),
    ({"boot": {"cmdline": "x"}}, "need boot.kernel"),
])
def test_validate_rejects(spec, needle):
    with pytest.raises(VseError) as err:
        validate(spec, {}, "g1")
    assert needle in str(err.value)


def test_digest_is_stable_and_sensitive():
    a, _unused = merge_layers([VENDOR, SITE])
    b, _unused = merge_layers([VENDOR, SITE])
    assert digest(a) == digest(b)
    b["memory"] = 1024
    assert digest(a) != digest(b)


def test_dedicated_pins_keep_current_and_avoid_taken():
    assert choose_dedicated_pins(2, {4, 5, 6, 7}, taken={4}) == [5, 6]
    assert choose_dedicated_pins(2, {4, 5, 6, 7}, taken={4}, current=[7, 6]) == [7, 6]
    assert choose_dedicated_pins(2, {4, 5, 6, 7}, taken={6}, current=[7, 6]) == [4, 5]
    assert choose_dedicated_pins(3, {4, 5, 6}, taken={5}) is None


def test_emulator_goes_to_housekeeping_else_outside_partition():
    assert emulator_cpus({2, 3}, {0, 1, 2, 3}, housekeeping={0}) == {0}
    assert emulator_cpus({2, 3}, {0, 1, 2, 3}) == {0, 1}


NODE = {"partitions": {"p0": {"cpus": frozenset({2, 3, 4, 5}), "mems": frozenset({0})}},
        "online": frozenset(range(8)), "housekeeping": frozenset({0, 1}), "pool": frozenset({6, 7}),
        "taken_cpus": frozenset({2}), "taken_ips": frozenset({"10.0.0.1"})}


def _resolved(extra, node=None, current=None):
    node = NODE if node is None else node
    spec, prov = merge_layers([VENDOR, SITE, {"name": "x", "spec": extra}])
    return resolve("g1", validate(spec, prov, "g1"), node, ["vendor", "site", "x"], current)


def test_resolve_dedicated_pins_emulator_numa_and_metadata():
    r = _resolved({"vcpus": 2, "placement": {"mode": "dedicated", "partition": "p0", "cpu_shares-": None},
                   "hugepages": "2M", "memory_locked": True})
    assert r["cputune"]["vcpupin"] == {"0": "3", "1": "4"}
    assert r["cputune"]["emulatorpin"] == "0,1"
    assert r["numatune"] == {"mode": "strict", "nodeset": "0"}
    assert r["metadata"]["placement"] == {"mode": "dedicated", "partition": "p0"}
    assert r["hugepages_kib"] == 2048 and r["locked"]


def test_resolve_dedicated_auto_and_missing_partition():
    r = _resolved({"placement": {"mode": "dedicated", "partition": "auto", "cpu_shares-": None}})
    assert r["metadata"]["placement"]["partition"] == "p0"
    with pytest.raises(VseError, match="partition 'nope' does not exist on this node"):
        _resolved({"placement": {"mode": "dedicated", "partition": "nope", "cpu_shares-": None}})
    with pytest.raises(VseError, match="has 3 free CPUs"):
        _resolved({"vcpus": 4, "placement": {"mode": "dedicated", "partition": "p0", "cpu_shares-": None}})


def test_resolve_shared_floats_over_pool_with_weights():
    r = _resolved({"placement": {"vcpu_quota": 50000}})
    assert r["vcpu_cpuset"] == "6,7"
    assert r["cputune"] == {"shares": 512, "quota": 50000}
    assert r["metadata"]["placement"] == {"mode": "shared", "cpu_shares": 512, "vcpu_quota": 50000}


def test_resolve_addresses_overlays_cmdline():
    r = _resolved({})
    ip = r["addresses"]["net0"]
    assert ip.startswith("10.0.0.") and ip != "10.0.0.1"
    assert r["interfaces"][0]["mac"].startswith("52:54:00:")
    assert r["os"]["cmdline"] == "console=ttyS0 hpcvirt.hostname=g1"
    assert r["disks"][0]["path"] == IMAGES + "/g1-vda.qcow2"
    assert r["metadata"]["overlays"] == {"vda": IMAGES + "/g1-vda.qcow2"}
    assert r["metadata"]["vse"]["layers"] == "vendor,site,x"
    assert r["metadata"]["access"] == {"users": "root,alice"}


def test_resolve_exhausted_range_is_a_clear_error():
    node = dict(NODE, taken_ips=frozenset("10.0.0.%d" % i for i in range(1, 7)))
    with pytest.raises(VseError, match="exhausted"):
        _resolved({}, node=node)


def test_a_guest_moved_by_lift_or_drop_stays_where_it_is_until_the_vse_placement_changes():
    first = _resolved({})
    # What a drop by the placement module leaves in the domain, as the owned view reads it.
    moved = {
        "cputune": {"vcpupin": {"0": "1"}, "emulatorpin": "0", "shares": None, "quota": -1, "period": None},
        "vcpu_cpuset": first["vcpu_cpuset"],
        "numatune": {"mode": "restrictive", "nodeset": "0"},
        "metadata": {"vse": dict(first["metadata"]["vse"]), "placement": {"mode": "dedicated", "partition": "p1"}},
    }
    again = _resolved({}, current=moved)
    assert again["cputune"]["vcpupin"] == {"0": "1"} and again["cputune"]["emulatorpin"] == "0"
    assert again["metadata"]["placement"] == {"mode": "dedicated", "partition": "p1"}
    assert again["metadata"]["vse"]["placement_digest"] == first["metadata"]["vse"]["placement_digest"]

    changed = _resolved({"placement": {"mode": "shared", "cpu_shares": 2048}}, current=moved)
    assert "vcpupin" not in changed["cputune"] and changed["cputune"]["shares"] == 2048
