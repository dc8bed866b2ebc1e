"""Unit tests of VSE layer merge, provenance, validation and resolution (pure logic)."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._vse import (
    MIN_MEMORY_MIB,
    VseError,
    digest,
    merge_layers,
    place,
    resolve,
    validate,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import NodeView
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


LAYOUT = {"housekeeping": "0,1", "pool": "6,7",
          "partitions": [{"name": "p0", "cpus": "2-5", "mems": "0"}]}
# A running guest pinned to CPU 2 of p0, and one holding an address.
OTHER = {"name": "other", "active": True, "vcpus": {"current": 1, "maximum": 1}, "vcpu_pins": {"0": "2"},
         "hpcvirt": {"addresses": {"net0": "10.0.0.1"}}}


def _view(layout=None, guests=(OTHER,)):
    return NodeView(layout or LAYOUT, list(guests), None)


def _resolved(extra, view=None, current=None, guest=None, taken_ips=frozenset({"10.0.0.1"})):
    spec, prov = merge_layers([VENDOR, SITE, {"name": "x", "spec": extra}])
    spec = validate(spec, prov, "g1")
    want = place(_view() if view is None else view, "g1", spec, guest, current)
    return resolve("g1", spec, want, ["vendor", "site", "x"], current, taken_ips)


def test_resolve_dedicated_pins_emulator_numa_and_metadata():
    r = _resolved({"vcpus": 2, "placement": {"mode": "dedicated", "partition": "p0", "cpu_shares-": None},
                   "hugepages": "2M", "memory_locked": True})
    assert r["cputune"]["vcpupin"] == {"0": "3", "1": "4"}       # CPU 2 is the other guest's
    assert r["cputune"]["emulatorpin"] == "0,1"                  # housekeeping
    assert r["numatune"] == {"mode": "strict", "nodeset": "0"}
    assert r["metadata"]["placement"] == {"mode": "dedicated", "partition": "p0"}
    assert r["hugepages_kib"] == 2048 and r["locked"]


def test_emulator_of_a_dedicated_guest_without_housekeeping_goes_to_the_pool_outside_its_partition():
    layout = dict(LAYOUT, housekeeping="")
    r = _resolved({"placement": {"mode": "dedicated", "partition": "p0", "cpu_shares-": None}}, view=_view(layout))
    assert r["cputune"]["emulatorpin"] == "6,7"


def test_auto_takes_the_best_fitting_whole_free_partition_and_refuses_clearly():
    layout = dict(LAYOUT, partitions=LAYOUT["partitions"] + [{"name": "p1", "cpus": "8-9", "mems": "0"},
                                                             {"name": "p2", "cpus": "10-13", "mems": "0"}])
    r = _resolved({"vcpus": 2, "placement": {"mode": "dedicated", "partition": "auto", "cpu_shares-": None}},
                  view=_view(layout))
    # p0 is partly held by another guest: auto takes a whole free one, the smallest that fits
    assert r["metadata"]["placement"]["partition"] == "p1" and r["cputune"]["vcpupin"] == {"0": "8", "1": "9"}
    with pytest.raises(VseError, match="placement.partition: guest 'g1': no partition can take 1 vCPUs"):
        _resolved({"placement": {"mode": "dedicated", "partition": "auto", "cpu_shares-": None}})


def test_dedicated_missing_or_too_small_partition_names_the_field():
    with pytest.raises(VseError, match="placement.partition: .*partition 'nope' does not exist on this node"):
        _resolved({"placement": {"mode": "dedicated", "partition": "nope", "cpu_shares-": None}})
    with pytest.raises(VseError, match="3 of its 4 CPUs are free and the guest needs 4"):
        _resolved({"vcpus": 4, "placement": {"mode": "dedicated", "partition": "p0", "cpu_shares-": None}})


def test_guests_placed_one_after_another_do_not_share_cpus():
    view = _view()
    spec, prov = merge_layers([VENDOR, {"name": "x", "spec": {"placement": {"mode": "dedicated", "partition": "p0"}}}])
    spec = validate(spec, prov, "a")
    first = place(view, "a", spec)
    second = place(view, "b", spec)
    assert first["vcpu_pins"] == [frozenset({3})] and second["vcpu_pins"] == [frozenset({4})]


def test_shared_guest_on_a_node_without_pool_is_refused():
    with pytest.raises(VseError, match="placement.mode: .*pool is empty"):
        _resolved({}, view=_view(dict(LAYOUT, pool="")))


def test_resolve_shared_floats_over_pool_with_weights():
    r = _resolved({"placement": {"vcpu_quota": 50000}})
    assert r["vcpu_cpuset"] == "6,7"
    # emulator threads over housekeeping and pool: never on a partition CPU
    assert r["cputune"] == {"shares": 512, "quota": 50000, "emulatorpin": "0,1,6,7"}
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
    with pytest.raises(VseError, match="exhausted"):
        _resolved({}, taken_ips=frozenset("10.0.0.%d" % i for i in range(1, 7)))


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


# --------------------------------------------------------------------------------------------
# The composition: plan_vse on a node (a NodeState's fields) with a domain that answers XMLDesc

from ansible_collections.hpcvirt.regime.plugins.module_utils import _vse as vse  # noqa: E402


class FakeLibvirt:
    VIR_DOMAIN_XML_INACTIVE = 2

    class libvirtError(Exception):
        pass


class Dom:
    """A defined domain as libvirt answers for it: its XML (persistent and live) and its state."""

    def __init__(self, xml, active=False, live_xml=None):
        self.xml, self.live_xml, self.active = xml, live_xml or xml, active

    def XMLDesc(self, flags):
        return self.xml if flags & FakeLibvirt.VIR_DOMAIN_XML_INACTIVE else self.live_xml

    def isActive(self):
        return self.active

    def UUIDString(self):
        return "6b1c2a7e-0000-4000-8000-000000000001"


class Node:
    def __init__(self, layout=None, guests=(), domains=None):
        self.layout = layout or LAYOUT
        self.guests = list(guests)
        self.domains = domains or {}
        self.topology, self.conn, self.ncpus = None, None, 8

    def guest(self, name):
        return next((g for g in self.guests if g["name"] == name), None)


@pytest.fixture
def files(tmp_path):
    for name in ("k", "i", "m.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "console").mkdir()
    return tmp_path


def params(files, state="running", **spec):
    base = {"domain_type": "qemu", "memory": 128,
            "boot": {"kernel": str(files / "k"), "initrd": str(files / "i")},
            "disks": [{"dev": "vda", "master": str(files / "m.qcow2")}],
            "console": {"path": str(files / "console" / "g1.log")},
            "placement": {"mode": "shared", "cpu_shares": 512}}
    base.update(spec)
    return {"name": "g1", "state": state, "layers": [{"name": "vendor", "spec": base}], "spec": None,
            "keep_disks": False, "force": False, "stop_mode": "destroy", "shutdown_timeout": 5}


def actions(plan):
    return [step.action.name for step in plan]


def test_a_new_guest_is_an_overlay_a_definition_and_a_start(files):
    plan, ctx, report = vse.plan_vse(Node(guests=[OTHER]), params(files), FakeLibvirt, volume_exists=lambda p: False)
    assert actions(plan) == ["create_overlay", "define", "start"]
    assert plan.steps[0].target == str(files / "g1-vda.qcow2")
    assert all(step.action in (vse.CREATE_OVERLAY, vse.DEFINE, vse.START) for step in plan)
    assert "<vcpu placement=\"static\" cpuset=\"6,7\">1</vcpu>" in ctx.xml
    assert report["restart_required"] is False and report["digest"] == report["resolved"]["metadata"]["vse"]["digest"]


def test_an_unchanged_guest_plans_nothing_and_a_changed_running_one_plans_define_and_set_live(files):
    first, ctx, _report = vse.plan_vse(Node(), params(files), FakeLibvirt, volume_exists=lambda p: False)
    running = Dom(ctx.xml, active=True)
    guest = {"name": "g1", "active": True, "vcpus": {"current": 1, "maximum": 1}, "vcpu_pins": {"0": "6,7"}}
    node = Node(guests=[guest], domains={"g1": running})
    again, _ctx, _report = vse.plan_vse(node, params(files), FakeLibvirt, volume_exists=lambda p: True)
    assert actions(again) == []
    changed, _ctx, report = vse.plan_vse(node, params(files, placement={"mode": "shared", "cpu_shares": 256}, vcpus=2),
                                         FakeLibvirt, volume_exists=lambda p: True)
    assert actions(changed)[0] == "define" and set(changed.steps[0].after) >= {"cputune.shares", "vcpus"}
    live = [step for step in changed if step.action is vse.SET_LIVE]
    assert [step.detail["field"] for step in live] == ["cputune.shares", "metadata"]
    assert live[0].before == 512 and live[0].after == 256
    assert report["restart_required"] and report["restart_fields"] == ["vcpus"]
    stopped, _ctx, _report = vse.plan_vse(node, params(files, state="stopped"), FakeLibvirt, volume_exists=lambda p: True)
    assert actions(stopped) == ["stop"] and stopped.steps[0].detail["mode"] == "destroy"


def test_a_domain_vse_did_not_make_is_neither_taken_over_nor_removed(files):
    foreign = Dom("<domain type='qemu'><name>g1</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    node = Node(domains={"g1": foreign})
    with pytest.raises(VseError, match="already exists and was not created by hpcvirt.regime.vse"):
        vse.plan_vse(node, params(files), FakeLibvirt, volume_exists=lambda p: True)
    with pytest.raises(VseError, match="refusing to remove it"):
        vse.plan_vse(node, params(files, state="absent"), FakeLibvirt, volume_exists=lambda p: True)


def test_absent_destroys_only_with_force_and_deletes_the_overlays_unless_kept(files):
    _plan, ctx, _report = vse.plan_vse(Node(), params(files), FakeLibvirt, volume_exists=lambda p: False)
    node = Node(domains={"g1": Dom(ctx.xml, active=True)})
    args = params(files, state="absent")
    args["state"] = "absent"
    with pytest.raises(VseError, match="force=true"):
        vse.plan_vse(node, args, FakeLibvirt, volume_exists=lambda p: True)
    args["force"] = True
    plan, _ctx, _report = vse.plan_vse(node, args, FakeLibvirt, volume_exists=lambda p: True)
    assert actions(plan) == ["destroy", "undefine", "delete_overlay"]
    assert plan.steps[2].target == str(files / "g1-vda.qcow2")
    args["keep_disks"] = True
    assert actions(vse.plan_vse(node, args, FakeLibvirt, volume_exists=lambda p: True)[0]) == ["destroy", "undefine"]
    assert actions(vse.plan_vse(Node(), args, FakeLibvirt, volume_exists=lambda p: True)[0]) == []


def test_missing_files_are_refused_before_anything_is_planned(files):
    args = params(files, disks=[{"dev": "vda", "master": str(files / "none.qcow2")}])
    with pytest.raises(VseError, match="disks \\(vda\\).master: master image .*none.qcow2 does not exist"):
        vse.plan_vse(Node(), args, FakeLibvirt, volume_exists=lambda p: False)


def test_a_failed_run_deletes_only_the_overlays_of_a_guest_never_defined(files, monkeypatch):
    deleted = []
    monkeypatch.setattr("ansible_collections.hpcvirt.regime.plugins.module_utils._storage.delete_volumes",
                        lambda conn, paths: deleted.extend(paths) or paths)
    plan, ctx, _report = vse.plan_vse(Node(), params(files), FakeLibvirt, volume_exists=lambda p: False)
    ctx.done = [plan.steps[0]]
    assert vse.undo_new_overlays(ctx) == [str(files / "g1-vda.qcow2")]
    ctx.dom = Dom(ctx.xml)
    deleted.clear()
    assert vse.undo_new_overlays(ctx) == [] and deleted == []


def test_an_oserror_creating_an_overlay_ends_as_a_message_naming_the_step(files, monkeypatch):
    import errno

    from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import describe
    from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import StepFailed, execute

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device", str(files / "g1-vda.qcow2"))

    monkeypatch.setattr("ansible_collections.hpcvirt.regime.plugins.module_utils._storage.create_overlay", full)
    plan, ctx, _report = vse.plan_vse(Node(), params(files), FakeLibvirt, volume_exists=lambda p: False)
    with pytest.raises(StepFailed) as failed:
        execute(plan, ctx)
    msg, extra = describe(failed.value)
    assert msg.startswith("step 1 of 3 (create_overlay %s): %s: No space left on device" % (
        files / "g1-vda.qcow2", files / "g1-vda.qcow2"))
    assert extra["steps_done"] == 0 and extra["changed"] is False
    assert ctx.done == [] and vse.undo_new_overlays(ctx) == []
