"""Placement planner: admission control, ordering, SMT and NUMA choices, idempotence."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import (
    PlacementError,
    normalise_request,
    plan_placements,
    quota_is_unlimited,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology

SMALL = {"housekeeping": "0", "pool": "1-3", "partitions": [
    {"name": "p0", "cpus": "4-5", "mems": "0"},
    {"name": "p1", "cpus": "6-7", "mems": "0"},
]}


def guest(name, pins, emulator="0-7", shares=1024, quota=-1, maximum=None, placement=None, active=True):
    maximum = maximum or len(pins)
    data = {
        "name": name, "active": active, "persistent": True,
        "vcpus": {"current": len(pins), "maximum": maximum},
        "vcpu_pins": {str(i): p for i, p in enumerate(pins)},
        "emulator_pin": emulator, "iothread_pins": {},
        "scheduler": {"cpu_shares": shares, "vcpu_quota": quota},
        "numatune": {}, "hpcvirt": {},
    }
    if placement:
        data["hpcvirt"] = {"placement": placement}
    return data


def steps(plan, action=None):
    return [s.to_dict() for s in plan if action is None or s.action == action]


def test_drop_pins_one_to_one_and_moves_emulator_first():
    result = plan_placements(SMALL, [guest("a", ["1-3", "1-3"])], [{"name": "a", "placement": "dedicated", "partition": "p0"}])
    plan, want = result["a"]
    actions = [s.action for s in plan]
    assert actions[0] == "pin_emulator"
    assert [s["after"] for s in steps(plan, "pin_vcpu")] == ["4", "5"]
    assert steps(plan, "pin_emulator")[0]["after"] == "0"
    assert steps(plan, "metadata")[0]["after"] == {"mode": "dedicated", "partition": "p0"}
    assert want["partition"] == "p0"
    # Already unlimited quota: no scheduler change for a dedicated guest.
    assert not steps(plan, "scheduler")


def test_second_run_plans_nothing():
    placed = guest("a", ["4", "5"], emulator="0", placement={"mode": "dedicated", "partition": "p0"})
    plan, _unused = plan_placements(SMALL, [placed], [{"name": "a", "placement": "dedicated", "partition": "p0"}])["a"]
    assert not plan


def test_auto_keeps_a_guest_where_it_is():
    placed = guest("a", ["7", "6"], emulator="0", placement={"mode": "dedicated", "partition": "p1"})
    plan, want = plan_placements(SMALL, [placed], [{"name": "a", "placement": "dedicated"}])["a"]
    assert want["partition"] == "p1"
    assert not plan


def test_offline_vcpus_are_pinned_too():
    g = guest("a", ["1-3"], maximum=2)
    g["vcpu_pins"]["1"] = "0-7"
    plan, _unused = plan_placements(SMALL, [g], [{"name": "a", "placement": "dedicated", "partition": "p0"}])["a"]
    assert [s["target"] for s in steps(plan, "pin_vcpu")] == ["a/vcpu0", "a/vcpu1"]


def test_lift_floats_over_pool_and_sets_shares_and_quota():
    placed = guest("a", ["4", "5"], emulator="0", placement={"mode": "dedicated", "partition": "p0"})
    plan, want = plan_placements(SMALL, [placed], [{"name": "a", "placement": "shared", "cpu_shares": 512,
                                                    "vcpu_quota": 50000}])["a"]
    assert [s.action for s in plan][:2] == ["pin_vcpu", "pin_vcpu"]   # widen vCPUs first
    assert [s["after"] for s in steps(plan, "pin_vcpu")] == ["1-3", "1-3"]
    assert steps(plan, "scheduler")[0]["after"] == {"cpu_shares": 512, "vcpu_quota": 50000}
    assert steps(plan, "metadata")[0]["after"] == {"mode": "shared", "cpu_shares": "512", "vcpu_quota": "50000"}
    assert want["partition"] is None


def test_refused_drop_names_guest_partition_and_blocker():
    others = guest("b", ["5"], emulator="0", placement={"mode": "dedicated", "partition": "p0"})
    with pytest.raises(PlacementError) as err:
        plan_placements(SMALL, [guest("a", ["1-3", "1-3"]), others],
                        [{"name": "a", "placement": "dedicated", "partition": "p0"}])
    message = str(err.value)
    assert "guest 'a'" in message and "partition 'p0'" in message and "CPU 5 used by b" in message


def test_unpinned_guest_floating_over_partition_blocks_a_drop():
    floating = guest("b", ["0-7"])
    with pytest.raises(PlacementError, match="CPU 4 used by b; CPU 5 used by b"):
        plan_placements(SMALL, [guest("a", ["1-3"]), floating],
                        [{"name": "a", "placement": "dedicated", "partition": "p0"}])


def test_lift_then_drop_in_one_call_swaps_a_partition():
    holder = guest("b", ["4", "5"], emulator="0", placement={"mode": "dedicated", "partition": "p0"})
    result = plan_placements(SMALL, [guest("a", ["1-3", "1-3"]), holder], [
        {"name": "a", "placement": "dedicated", "partition": "p0"},
        {"name": "b", "placement": "shared"},
    ])
    assert list(result) == ["b", "a"]           # the lift is ordered first
    assert [s["after"] for s in steps(result["a"][0], "pin_vcpu")] == ["4", "5"]


def test_two_drops_never_share_a_cpu():
    result = plan_placements(SMALL, [guest("a", ["1-3"]), guest("b", ["1-3"])], [
        {"name": "a", "placement": "dedicated"},
        {"name": "b", "placement": "dedicated"},
    ])
    assert result["a"][1]["partition"] != result["b"][1]["partition"]


def test_auto_with_no_room():
    with pytest.raises(PlacementError, match="no partition can take 3 vCPUs"):
        plan_placements(SMALL, [guest("a", ["1-3"] * 3)], [{"name": "a", "placement": "dedicated"}])


@pytest.mark.parametrize("request_, words", [
    ({"name": "a", "placement": "dedicated", "partition": "nope"}, "partition 'nope' does not exist"),
    ({"name": "zz", "placement": "shared"}, "no guest 'zz'"),
    ({"name": "a", "placement": "sideways"}, "must be 'dedicated' or 'shared'"),
    ({"name": "a", "placement": "dedicated", "cpu_shares": 5}, "cpu_shares: only for shared"),
    ({"name": "a", "placement": "shared", "cpu_shares": 1}, "outside 2..262144"),
    ({"name": "a", "placement": "shared", "vcpu_quota": 10}, "vcpu_quota: 10 must be -1"),
])
def test_bad_requests(request_, words):
    with pytest.raises(PlacementError, match=words):
        plan_placements(SMALL, [guest("a", ["1-3"])], [request_])


def test_duplicate_guest():
    with pytest.raises(PlacementError, match="listed twice"):
        plan_placements(SMALL, [guest("a", ["1-3"])], [{"name": "a", "placement": "shared"}] * 2)


def test_empty_pool_refuses_lift():
    layout = dict(SMALL, pool="")
    with pytest.raises(PlacementError, match="pool is empty"):
        plan_placements(layout, [guest("a", ["4"])], [{"name": "a", "placement": "shared"}])


def test_quota_normalisation():
    assert quota_is_unlimited(-1) and quota_is_unlimited(0) and quota_is_unlimited(None)
    assert quota_is_unlimited(17592186044415)
    assert not quota_is_unlimited(50000)
    # A persistent config that says 0 is the same as a live -1: no change planned.
    placed = guest("a", ["4", "5"], emulator="0", quota=0, placement={"mode": "dedicated", "partition": "p0"})
    assert not plan_placements(SMALL, [placed], [{"name": "a", "placement": "dedicated", "partition": "p0"}])["a"][0]


def test_normalise_fills_defaults():
    expected = {"name": "a", "placement": "dedicated", "partition": "auto"}
    assert normalise_request(0, {"name": "a", "placement": "dedicated"}) == expected


# ---- on the recorded two-socket server: SMT siblings together, NUMA-local choice ---------------


@pytest.fixture
def server(sysfs_tree):
    return read_topology(sysfs_tree("server-2s-4numa"))


SERVER = {"housekeeping": "0-1,64-65", "pool": "48-63,112-127", "partitions": [
    {"name": "n0", "cpus": "2-5,66-69", "mems": "0"},       # node 0, 4 cores with siblings
    {"name": "n2", "cpus": "32-35,96-99", "mems": "2"},     # node 2
    {"name": "n2big", "cpus": "36-47,100-111", "mems": "2"},
]}


def test_dedicated_pins_follow_cores(server):
    request = [{"name": "a", "placement": "dedicated", "partition": "n0"}]
    plan, _unused = plan_placements(SERVER, [guest("a", ["48-63,112-127"] * 4)], request, server)["a"]
    # vCPU pairs land on SMT sibling pairs: (2,66), (3,67).
    assert [s["after"] for s in steps(plan, "pin_vcpu")] == ["2", "66", "3", "67"]
    assert steps(plan, "numatune")[0]["after"] == "0"
    assert steps(plan, "pin_emulator")[0]["after"] == "0,1,64,65"


def test_auto_prefers_the_guests_numa_node_then_best_fit(server):
    g = guest("a", ["48-63,112-127"] * 4)
    g["numatune"] = {"mode": "restrictive", "nodeset": "2"}
    _unused, want = plan_placements(SERVER, [g], [{"name": "a", "placement": "dedicated"}], server)["a"]
    assert want["partition"] == "n2"         # on node 2, and the tighter of the two there
    g["numatune"] = {"mode": "restrictive", "nodeset": "0"}
    _unused, want = plan_placements(SERVER, [g], [{"name": "a", "placement": "dedicated"}], server)["a"]
    assert want["partition"] == "n0"


def test_shared_numatune_spans_the_pool_nodes(server):
    g = guest("a", ["2"], emulator="0")
    g["numatune"] = {"mode": "restrictive", "nodeset": "0"}
    plan, _unused = plan_placements(SERVER, [g], [{"name": "a", "placement": "shared"}], server)["a"]
    assert steps(plan, "numatune")[0]["after"] == "3"


def test_named_partition_can_hold_several_guests_on_distinct_cpus():
    result = plan_placements(SMALL, [guest("a", ["1-3"]), guest("b", ["1-3"])], [
        {"name": "a", "placement": "dedicated", "partition": "p0"},
        {"name": "b", "placement": "dedicated", "partition": "p0"},
    ])
    cpus_a = result["a"][1]["vcpu_pins"][0]
    cpus_b = result["b"][1]["vcpu_pins"][0]
    assert cpus_a | cpus_b == {4, 5} and not cpus_a & cpus_b


def test_stopped_guests_do_not_block_a_drop():
    stopped = guest("b", ["0-7"], active=False)
    plan, want = plan_placements(SMALL, [guest("a", ["1-3"]), stopped],
                                 [{"name": "a", "placement": "dedicated", "partition": "p0"}])["a"]
    assert want["partition"] == "p0" and plan


def test_refused_requests_can_be_collected_for_overflow():
    holder = guest("b", ["4", "5"], emulator="0", placement={"mode": "dedicated", "partition": "p0"})
    refused = {}
    result = plan_placements(SMALL, [guest("a", ["1-3", "1-3"]), holder],
                             [{"name": "a", "placement": "dedicated", "partition": "p0"},
                              {"name": "b", "placement": "dedicated", "partition": "p0"}], refused=refused)
    assert list(result) == ["b"] and list(refused) == ["a"]
    assert "CPU 4 used by b" in refused["a"]


def test_lift_without_shares_keeps_the_recorded_intent():
    tuned = guest("a", ["1-3"], emulator="0-3", placement={"mode": "shared", "cpu_shares": "256"})
    plan, _unused = plan_placements(SMALL, [tuned], [{"name": "a", "placement": "shared"}])["a"]
    assert not [s for s in plan if s.action == "metadata"]


def test_a_guest_listed_twice_is_refused_not_merged():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import requests_from_params
    entries = [{"name": "a", "placement": "shared", "partition": "auto", "cpu_shares": None, "vcpu_quota": None},
               {"name": "a", "placement": "dedicated", "partition": "auto", "cpu_shares": None, "vcpu_quota": None}]
    with pytest.raises(PlacementError, match=r"guests\[1\].name: guest 'a' is listed twice \(also guests\[0\]\)"):
        requests_from_params(entries)


def test_a_partition_for_a_shared_guest_is_refused_not_dropped():
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import (
        normalise_request,
        requests_from_params,
    )
    request = requests_from_params([{"name": "a", "placement": "shared", "partition": "p1"}])[0]
    with pytest.raises(PlacementError, match=r"guests\[0\].partition: only for dedicated placement.*'p1'"):
        normalise_request(0, request)
    assert "partition" not in requests_from_params([{"name": "a", "placement": "shared", "partition": "auto"}])[0]


@pytest.mark.parametrize("name", ["a\n", "../x", "x" * 201, "", "-a"])
def test_guest_names_match_whole(name):
    from ansible_collections.hpcvirt.regime.plugins.module_utils._placement import normalise_request
    with pytest.raises(PlacementError, match=r"guests\[0\].name"):
        normalise_request(0, {"name": name, "placement": "shared"})
