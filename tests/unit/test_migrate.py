"""Pure logic of live migration: where the guest is, flags, capacity, placement, stats, evacuation."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _migrate as mg

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
    desired = mg.shared_placement({2, 3}, 2, cpu_shares=512)
    current = {"vcpu_pins": {"0": "2-3", "1": "0-3"}, "emulator_pin": "0-3", "scheduler": {"cpu_shares": 1024}}
    assert mg.placement_changes(current, desired) == {
        "vcpu 1": ("0-3", "2,3"), "emulator": ("0-3", "2,3"), "cpu_shares": (1024, 512)}
    done = {"vcpu_pins": {"0": "2,3", "1": "2-3"}, "emulator_pin": "2-3", "scheduler": {"cpu_shares": 512}}
    assert mg.placement_changes(done, desired) == {}


def test_node_without_scheduler_parameters_is_not_a_change_for_ever():
    desired = mg.shared_placement({0, 1}, 1, cpu_shares=512)
    current = {"vcpu_pins": {"0": "0-1"}, "emulator_pin": "0-1", "scheduler": None}
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
