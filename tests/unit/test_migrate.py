"""Pure logic of live migration: where the guest is, flags, capacity, placement, stats, evacuation."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _migrate as mg
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import NodeState

# ------------------------------------------------------------------ nodes and guests as read


def guest(name, vcpus=1, active=True, pins="0-3", emulator="0-3", scheduler=None, hpcvirt=None, uuid="u-1",
          managed_save=False, persistent=True, memory_kb=131072):
    """A guest as ``_node.read_guest`` reports it."""
    return {"name": name, "uuid": uuid, "active": active, "persistent": persistent, "managed_save": managed_save,
            "state": "running" if active else "shutoff", "vcpus": {"current": vcpus, "maximum": vcpus},
            "vcpu_pins": {str(i): pins for i in range(vcpus)}, "emulator_pin": emulator, "iothread_pins": {},
            "scheduler": scheduler if scheduler is not None else {}, "hpcvirt": hpcvirt or {},
            "memory_kb": memory_kb, "max_memory_kb": memory_kb, "numatune": {}}


def source_node(*guests, pool="0-3"):
    layout = {"housekeeping": pool, "pool": pool, "partitions": [], "unassigned": "", "source": "default"}
    return NodeState(None, None, None, layout, {"name": "time_shared"}, guests=list(guests),
                     domains={g["name"]: None for g in guests})


def dest_node(pool, *guests):
    """A destination as ``remote_node`` builds it: pool from dest_pool, else every online CPU (0-3)."""
    layout = {"housekeeping": "0-3" if pool is None else "", "pool": "0-3" if pool is None else pool,
              "partitions": [], "unassigned": "", "source": "online_cpus" if pool is None else "option"}
    return NodeState(None, None, None, layout, {"name": None}, guests=list(guests))


def facts(free_mb=4096, src_uuid="h1", dest_uuid="h2", need=None):
    return {"source": {"uri": "qemu:///system", "hostname": "n1", "host_uuid": src_uuid},
            "destination": {"uri": "qemu+unix:///system?socket=/n2", "hostname": "n2", "host_uuid": dest_uuid,
                            "free_memory_kb": free_mb * 1024, "free_hugepages": {}},
            "need": need or {"memory_kb": 131072, "vcpus": 1, "vcpus_max": 1, "hugepages_kb": None, "hugepages": 0,
                             "writable_disks": ["vda"]}}


PARAMS = dict(name="g", uri="qemu:///system", dest_uri="qemu+unix:///system?socket=/n2", migrate_uri=None,
              socket_dir="/run/mig", disks="shared", copy_disks=None, disks_uri=None, unsafe=True, bandwidth=0,
              bandwidth_postcopy=0, max_downtime_ms=0, auto_converge=False, postcopy=False,
              postcopy_after_iterations=3, postcopy_after_ms=10000, postcopy_recover_attempts=3, timeout=600,
              placement="shared", dest_pool=None, cpu_shares=None, vcpu_quota=None, reserve_memory_mb=256,
              vcpu_overcommit=4.0)

GUEST = {"active": True, "persistent": True, "uuid": "u1", "managed_save": False}
OFF = dict(GUEST, active=False)


@pytest.mark.parametrize("source, dest, action", [
    (GUEST, None, "migrate"),
    (GUEST, OFF, "migrate"),            # a stale inactive definition on the destination is replaced
    (OFF, None, "migrate_offline"),
    (None, GUEST, "arrived"),
    (OFF, GUEST, "finish"),
])
def test_locate(source, dest, action):
    assert mg.locate(source, dest) == action


@pytest.mark.parametrize("source, dest, words", [
    (None, None, "neither"),
    (GUEST, GUEST, "both"),
    (GUEST, dict(GUEST, uuid="u2"), "different domain"),
    (dict(OFF, managed_save=True), None, "preempted"),
    (None, OFF, "only defined"),
])
def test_locate_refuses(source, dest, words):
    with pytest.raises(mg.MigrationError, match=words):
        mg.locate(source, dest)


def test_flags_for_a_live_move_with_copied_disks_and_postcopy():
    names = mg.migration_flag_names("migrate", disks="copy", unsafe=True, auto_converge=True, postcopy=True)
    assert names == ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST",
                     "VIR_MIGRATE_UNDEFINE_SOURCE", "VIR_MIGRATE_NON_SHARED_DISK", "VIR_MIGRATE_UNSAFE",
                     "VIR_MIGRATE_AUTO_CONVERGE", "VIR_MIGRATE_POSTCOPY"]


def test_offline_flags_and_transient_source():
    assert mg.migration_flag_names("migrate_offline") == [
        "VIR_MIGRATE_PEER2PEER", "VIR_MIGRATE_PERSIST_DEST", "VIR_MIGRATE_UNDEFINE_SOURCE", "VIR_MIGRATE_OFFLINE"]
    assert "VIR_MIGRATE_UNDEFINE_SOURCE" not in mg.migration_flag_names("migrate", persistent_source=False)


def test_params_with_socket_dir():
    params = mg.migration_params("g1", socket_dir="/run/mig/", bandwidth=100, disks="copy",
                                 copy_disks=["vda"])
    assert params == {"migrate_uri": "unix:///run/mig/g1.sock", "bandwidth": 100, "migrate_disks": ["vda"],
                      "disks_uri": "unix:///run/mig/g1-disks.sock"}
    assert mg.migration_params("g1", migrate_uri="tcp://n2:49152", socket_dir="/x") == {"migrate_uri": "tcp://n2:49152"}
    assert mg.migration_params("g1", disks="shared", copy_disks=["vda"]) == {}


NEED = {"memory_kb": 1024 * 1024, "vcpus": 2, "hugepages_kb": None, "hugepages": 0}


def node(free_mb, pool, vcpus=0, name="n"):
    return {"name": name, "free_memory_kb": free_mb * 1024, "pool": frozenset(pool), "active_vcpus": vcpus,
            "free_hugepages": {}}


def test_capacity_fits():
    assert mg.check_capacity(NEED, node(2048, {0, 1}), reserve_memory_mb=512, vcpu_overcommit=2) == []


def test_capacity_memory_counts_the_reserve():
    problems = mg.check_capacity(NEED, node(1200, {0, 1}), reserve_memory_mb=256)
    assert len(problems) == 1 and "1280 MiB" in problems[0] and "1200 MiB free" in problems[0]


def test_capacity_pool_and_overcommit():
    assert "no shared pool" in mg.check_capacity(NEED, node(4096, set()))[0]
    problems = mg.check_capacity(NEED, node(4096, {0, 1}, vcpus=3), vcpu_overcommit=2.0)
    assert "5 vCPUs would float over 2 pool CPUs (0,1)" in problems[0]
    assert mg.check_capacity(NEED, node(4096, {0, 1}, vcpus=300), vcpu_overcommit=0) == []


def test_capacity_hugepages():
    need = dict(NEED, hugepages_kb=2048, hugepages=512)
    dest = node(0, {0}, name="n")
    dest["free_hugepages"] = {2048: 100}
    assert "512 free 2048 KiB hugepages, the destination has 100" in mg.check_capacity(need, dest)[0]
    dest["free_hugepages"] = {2048: 512}
    assert mg.check_capacity(need, dest) == []


def test_shared_placement_and_its_changes():
    desired = mg.desired_placement(dest_node("2-3"), guest("g", vcpus=2), cpu_shares=512)
    current = {"vcpu_pins": {"0": "2-3", "1": "0-3"}, "emulator_pin": "0-3", "scheduler": {"cpu_shares": 1024}}
    assert mg.placement_changes(current, desired) == {
        "vcpu 1": ("0-3", "2,3"), "emulator": ("0-3", "2,3"), "cpu_shares": (1024, 512)}
    done = {"vcpu_pins": {"0": "2,3", "1": "2-3"}, "emulator_pin": "2-3", "scheduler": {"cpu_shares": 512}}
    assert mg.placement_changes(done, desired) == {}


def test_node_without_scheduler_parameters_is_not_a_change_for_ever():
    desired = mg.desired_placement(dest_node(None), guest("g"), cpu_shares=512)
    current = {"vcpu_pins": {"0": "0-3"}, "emulator_pin": "0-3", "scheduler": None}
    assert mg.placement_changes(current, desired) == {}
    assert "cpu_shares not applied" in mg.scheduler_unsupported(current, desired)


def test_scheduler_from_options_or_metadata():
    metadata = {"placement": {"mode": "shared", "cpu_shares": "256", "vcpu_quota": "bad"}}
    assert mg.placement_from_metadata(metadata) == (256, None)
    assert mg.placement_from_metadata(metadata, cpu_shares=100, vcpu_quota=5000) == (100, 5000)
    assert mg.placement_from_metadata({}) == (None, None)


def test_postcopy_switch():
    assert not mg.should_start_postcopy({}, 99999, 3, 1000)
    assert not mg.should_start_postcopy({"memory_processed": 10, "memory_iteration": 2}, 500, 3, 1000)
    assert mg.should_start_postcopy({"memory_processed": 10, "memory_iteration": 4}, 500, 3, 1000)
    assert mg.should_start_postcopy({"memory_processed": 10, "memory_iteration": 1}, 1000, 3, 1000)
    assert not mg.should_start_postcopy({"memory_processed": 10, "memory_iteration": 9}, 1e6, 0, 0)


def test_job_stats_normalised():
    raw = {"type": 3, "time_elapsed": 5137, "downtime": 204, "setup_time": 0, "data_processed": 92692434,
           "memory_iteration": 4, "disk_processed": 0}
    stats = mg.normalise_job_stats(raw)
    assert stats["downtime_ms"] == 204 and stats["total_ms"] == 5137 and stats["setup_ms"] == 0
    assert stats["data_transferred_bytes"] == 92692434 and stats["disk_transferred_bytes"] == 0
    assert stats["postcopy_requests"] is None
    assert mg.normalise_job_stats(None)["downtime_ms"] is None


GUEST_XML = """<domain type='qemu'><name>g</name><memory unit='MiB'>128</memory>
<vcpu placement='static' current='2'>4</vcpu><devices>
<disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/></disk>
<disk type='file' device='cdrom'><source file='/b.iso'/><target dev='hdc'/><readonly/></disk>
</devices></domain>"""


def test_guest_needs_from_xml():
    need = mg.guest_needs_from_xml(GUEST_XML)
    assert need == {"memory_kb": 131072, "vcpus": 2, "vcpus_max": 4, "hugepages_kb": None, "hugepages": 0,
                    "writable_disks": ["vda"]}
    huge = GUEST_XML.replace("<devices>", "<memoryBacking><hugepages><page size='2' unit='M'/></hugepages>"
                             "</memoryBacking><devices>")
    assert mg.guest_needs_from_xml(huge)["hugepages"] == 64


GUESTS = [{"name": "a", "memory_kb": 4 << 20, "vcpus": 2}, {"name": "b", "memory_kb": 2 << 20, "vcpus": 1},
          {"name": "c", "memory_kb": 2 << 20, "vcpus": 1}, {"name": "d", "memory_kb": 1 << 20, "vcpus": 1}]


def test_spread_balances_free_memory():
    nodes = [node(8192, {0, 1}, name="n2"), node(8192, {0, 1}, name="n3")]
    placed, homeless = mg.choose_destinations(GUESTS, nodes, "spread")
    assert homeless == []
    assert placed == {"a": "n2", "b": "n3", "c": "n3", "d": "n2"}


def test_pack_fills_one_node_first_and_reports_what_fits_nowhere():
    nodes = [node(7168, {0, 1}, name="n2"), node(3072, {0, 1}, name="n3")]
    placed, homeless = mg.choose_destinations(GUESTS, nodes, "pack")
    # a (4G) only fits n2; then each guest goes to the fullest node that still fits (ties by name).
    assert placed == {"a": "n2", "b": "n2", "c": "n3", "d": "n2"}
    assert homeless == []
    placed, homeless = mg.choose_destinations(GUESTS, [node(5120, {0}, name="n2")], "pack")
    assert placed == {"a": "n2", "d": "n2"} and homeless == ["b", "c"]


def test_evacuation_respects_overcommit_and_rejects_unknown_strategy():
    placed, homeless = mg.choose_destinations(GUESTS, [node(65536, {0}, vcpus=1, name="n2")], "spread",
                                              vcpu_overcommit=3)
    assert placed == {"a": "n2"} and homeless == ["b", "c", "d"]
    with pytest.raises(ValueError, match="strategy"):
        mg.choose_destinations(GUESTS, [], "random")


# ------------------------------------------------------------------ the composition: plan_migration


def names(plan):
    return [step.name for step in plan]


def test_a_running_guest_is_migrated_placed_and_recorded():
    plan, report = mg.plan_migration(source_node(guest("g", vcpus=2)), dest_node("2-3"), facts(),
                                     dict(PARAMS, cpu_shares=512))
    assert [step.action for step in plan] == [mg.MIGRATE, mg.PLACE, mg.RECORD]
    assert report["action"] == "migrate" and report["capacity_problems"] == []
    migrate, place, record = plan.steps
    assert migrate.before == {"node": "n1", "state": "running"} and migrate.after == {"node": "n2", "state": "running"}
    assert "VIR_MIGRATE_LIVE" in migrate.detail["flags"]
    assert migrate.detail["params"]["migrate_uri"] == "unix:///run/mig/g.sock"
    # THE placement policy: vCPUs over the pool; without housekeeping known, the emulator too.
    assert place.after == {"vcpu_pins": {"0": "2,3", "1": "2,3"}, "emulator_pin": "2,3", "iothreads": "2,3",
                           "scheduler": {"cpu_shares": 512}}
    assert record.detail["metadata"]["migration"]["home_host"] == "n1"
    assert record.detail["metadata"]["placement"] == {"mode": "shared", "cpu_shares": "512"}


def test_diff_shows_where_the_guest_is_before_and_after_as_states():
    _plan, report = mg.plan_migration(source_node(guest("g")), dest_node(None), facts(), PARAMS)
    assert report["before"]["destination"] is None and report["after"]["source"] is None
    assert report["before"]["source"]["state"] == "running"
    after = report["after"]["destination"]
    assert after["state"] == "running" and after["persistent"] is True
    assert after["placement"]["vcpu_pins"] == {"0": "0-3"} and after["placement"]["emulator_pin"] == "0-3"


def test_placement_keep_moves_without_pinning():
    plan, report = mg.plan_migration(source_node(guest("g")), dest_node("2"), facts(), dict(PARAMS, placement="keep"))
    assert names(plan) == ["migrate", "record"] and report["placement"]["desired"] is None


def test_arrived_guest_is_no_change_when_placed_and_recorded():
    meta = {"migration": {"to_host": "n2", "home_host": "n1"}, "placement": {"mode": "shared"}}
    there = guest("g", pins="2-3", emulator="2-3", hpcvirt=meta)
    plan, report = mg.plan_migration(source_node(), dest_node("2-3", there), facts(), PARAMS)
    assert report["action"] == "arrived" and not plan


def test_a_run_killed_after_the_migration_converges_on_the_next():
    """The guest is on the destination with its source pins and no record of the hop."""
    there = guest("g", pins="0-3", emulator="0-3", hpcvirt={"migration": {"to_host": "n1", "home_host": "n0"}})
    plan, report = mg.plan_migration(source_node(), dest_node("2-3", there), facts(), PARAMS)
    assert report["action"] == "arrived" and names(plan) == ["place", "record"]
    record = plan.steps[1].detail["metadata"]["migration"]
    assert record["to_host"] == "n2" and record["from_host"] == "n1" and record["home_host"] == "n0"
    placed = guest("g", pins="2-3", emulator="2-3", hpcvirt={"migration": {"to_host": "n1"}})
    plan, _report = mg.plan_migration(source_node(), dest_node("2-3", placed), facts(), PARAMS)
    assert names(plan) == ["record"]


def test_a_stale_source_definition_is_removed():
    here = guest("g", active=False)
    meta = {"migration": {"to_host": "n2"}, "placement": {"mode": "shared"}}
    there = guest("g", pins="2-3", emulator="2-3", hpcvirt=meta)
    plan, report = mg.plan_migration(source_node(here), dest_node("2-3", there), facts(), PARAMS)
    assert report["action"] == "finish" and [s.action for s in plan] == [mg.UNDEFINE_SOURCE]


def test_a_shut_off_guest_moves_offline_without_placement():
    plan, report = mg.plan_migration(source_node(guest("g", active=False)), dest_node("2"), facts(free_mb=0), PARAMS)
    assert report["action"] == "migrate_offline" and names(plan) == ["migrate", "record"]
    assert plan.steps[0].detail["offline"] and "VIR_MIGRATE_OFFLINE" in plan.steps[0].detail["flags"]


@pytest.mark.parametrize("dest,fact,words", [
    (dest_node("2"), facts(free_mb=100), "cannot take guest 'g'.*memory.*nothing was moved"),
    (dest_node(""), facts(), "no shared pool CPUs"),
    (dest_node("2"), facts(dest_uuid="h1"), "^dest_uri: .* is the source node itself"),
])
def test_refusals_change_nothing(dest, fact, words):
    with pytest.raises(mg.MigrationError, match=words) as refused:
        mg.plan_migration(source_node(guest("g")), dest, fact, PARAMS)
    assert refused.value.details["action"] in (None, "migrate")


def test_overcommit_counts_the_guests_already_there():
    others = [guest("o%d" % i, vcpus=2, uuid="o%d" % i) for i in range(2)]
    with pytest.raises(mg.MigrationError, match="overcommit"):
        mg.plan_migration(source_node(guest("g")), dest_node("2", *others), facts(), dict(PARAMS, vcpu_overcommit=4))


def test_a_guest_nowhere_names_the_field():
    with pytest.raises(mg.MigrationError, match="^name: the guest is defined neither"):
        mg.plan_migration(source_node(), dest_node("2"), facts(), PARAMS)


@pytest.mark.parametrize("over,words", [
    ({"bandwidth": -1}, "^bandwidth: must be 0 or more"),
    ({"vcpu_overcommit": -1.0}, "^vcpu_overcommit:"),
    ({"dest_pool": "3-1"}, "^dest_pool:"),
    ({"copy_disks": ["vda"]}, "^copy_disks/disks_uri:"),
    ({"cpu_shares": 1}, "^cpu_shares: 1 is outside 2..262144"),
    ({"vcpu_quota": 5}, "^vcpu_quota:"),
    ({"name": "../x"}, "^name:"),
    ({"migrate_uri": "tcp://n2:1"}, "^migrate_uri/socket_dir:"),
])
def test_bad_options_are_refused_naming_the_option(over, words):
    with pytest.raises(mg.MigrationRequestError, match=words):
        mg.validate(dict(PARAMS, **over))
