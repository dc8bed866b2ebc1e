"""Evacuation and restore plans over node_info results (pure logic, no libvirt)."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _migrate as mg
from ansible_collections.hpcvirt.regime.plugins.filter.evacuation_plan import evacuation_plan
from ansible_collections.hpcvirt.regime.plugins.filter.restore_plan import restore_plan
from ansible.errors import AnsibleFilterError


def dom(name, active=True, vcpus=1, memory_mb=128, observed="shared", intent=None, meta=None, managed_save=False):
    return {"name": name, "active": active, "vcpus": {"current": vcpus, "maximum": vcpus},
            "memory_kb": memory_mb * 1024, "max_memory_kb": memory_mb * 1024, "managed_save": managed_save,
            "placement": {"observed": observed, "intent": intent}, "hpcvirt": meta or {}}


def node(hostname, domains, free_mb=4096, pool="0-1"):
    return {"hostname": hostname, "domains": domains, "layout": {"pool": pool},
            "topology": {"numa_nodes": [{"mem_free_kb": free_mb * 1024 // 2}, {"mem_free_kb": free_mb * 1024 // 2}]}}


def test_candidates_are_running_guests_not_dedicated_matching_the_pattern():
    domains = [dom("web-1"), dom("mpi-1", observed="dedicated"), dom("lifted", observed="custom", intent="dedicated"),
               dom("off", active=False), dom("odd", observed="custom"), dom("db-1", vcpus=2, memory_mb=512)]
    assert [g["name"] for g in mg.evacuation_candidates(domains)] == ["web-1", "odd", "db-1"]
    assert mg.evacuation_candidates(domains, "^web-") == [{"name": "web-1", "memory_kb": 131072, "vcpus": 1}]


def test_plan_moves_spread_over_destinations_and_leaves_the_rest():
    sources = {"a": node("a", [dom("g1"), dom("g2", memory_mb=256), dom("mpi", observed="dedicated")])}
    destinations = {"b": node("b", [dom("x", vcpus=2)], free_mb=2048), "c": node("c", [], free_mb=1024),
                    "a": node("a", [])}  # a source is never a destination
    plan = mg.plan_evacuation(sources, destinations, "spread")
    assert [(m["name"], m["to"], m["pool"]) for m in plan["moves"]] == [("g1", "b", "0-1"), ("g2", "b", "0-1")]
    assert plan["preempt"] == [] and plan["stay"] == [{"name": "mpi", "from": "a"}]
    assert plan["destinations"] == {"b": {"free_memory_mb": 2048, "pool": "0,1", "active_vcpus": 2},
                                    "c": {"free_memory_mb": 1024, "pool": "0,1", "active_vcpus": 0}}


def test_plan_counts_guests_placed_earlier_so_a_destination_is_not_overbooked():
    sources = {"a": node("a", [dom("g%d" % i, memory_mb=512) for i in range(3)]),
               "d": node("d", [dom("h1", memory_mb=512)])}
    plan = mg.plan_evacuation(sources, {"b": node("b", [], free_mb=1200)}, "pack", reserve_memory_mb=0)
    assert len(plan["moves"]) == 2 and {m["to"] for m in plan["moves"]} == {"b"}
    assert len(plan["preempt"]) == 2
    assert {p["from"] for p in plan["preempt"]} <= {"a", "d"}


def test_plan_preempts_what_exceeds_the_overcommit():
    sources = {"a": node("a", [dom("small"), dom("big", vcpus=2)])}
    plan = mg.plan_evacuation(sources, {"b": node("b", [], pool="0-1")}, vcpu_overcommit=0.75)
    assert [m["name"] for m in plan["moves"]] == ["small"]
    assert plan["preempt"] == [{"name": "big", "from": "a"}]


def test_kept_guests_stay_on_their_own_node_only():
    sources = {"a": node("a", [dom("rank0"), dom("web")]), "d": node("d", [dom("rank1")])}
    plan = evacuation_plan(sources, {"b": node("b", [])}, keep={"a": ["rank0", "rank1"], "d": None})
    assert sorted(m["name"] for m in plan["moves"]) == ["rank1", "web"]   # rank1 is kept on a, not on d
    assert plan["stay"] == [{"name": "rank0", "from": "a"}]


def test_plan_without_destinations_preempts_everything():
    plan = mg.plan_evacuation({"a": node("a", [dom("g1")])}, {})
    assert plan["moves"] == [] and plan["preempt"] == [{"name": "g1", "from": "a"}]


def test_a_guest_name_on_two_sources_is_refused():
    sources = {"a": node("a", [dom("twin")]), "b": node("b", [dom("twin")])}
    with pytest.raises(ValueError, match="twin"):
        mg.plan_evacuation(sources, {})
    with pytest.raises(AnsibleFilterError, match="evacuation_plan: .*twin"):
        evacuation_plan(sources, {})


def test_restore_plan_reads_only_the_guests_metadata():
    home = {"migration": {"home_host": "host-a"}}
    elsewhere = {"migration": {"home_host": "host-z"}}
    preempted = {"checkpoint": {"state": "preempted"}}
    nodes = {
        "a": node("host-a", [dom("saved", active=False, managed_save=True, meta=preempted),
                             dom("resumed-already", meta=home),
                             dom("shut-off", active=False, meta={"checkpoint": {"state": "resumed"}})]),
        "b": node("host-b", [dom("away", meta=home), dom("foreign", meta=elsewhere), dom("native")], pool="1"),
        "c": node("host-c", [dom("saved-away", active=False, managed_save=True, meta=preempted)]),
    }
    plan = mg.plan_restore(nodes, ["a"])
    assert plan["moves"] == [{"name": "away", "from": "b", "to": "a", "pool": "0-1"}]
    assert plan["resume"] == [{"name": "saved", "on": "a"}]
    assert restore_plan(nodes, ["a"], pattern="^sav") == {"moves": [], "resume": [{"name": "saved", "on": "a"}]}
    assert mg.plan_restore(nodes, ["c"])["resume"] == [{"name": "saved-away", "on": "c"}]


@pytest.mark.parametrize("call,words", [
    (lambda s: evacuation_plan(s, s, pattern="web-("), "evacuation_plan: pattern: 'web-\\(' is not a valid regular"),
    (lambda s: restore_plan(s, ["a"], pattern="[z-a]"), "restore_plan: pattern: '\\[z-a\\]' is not a valid regular"),
    (lambda s: evacuation_plan(s, s, strategy="random"), "evacuation_plan: strategy: must be one of spread, pack"),
    (lambda s: evacuation_plan(s, s, reserve_memory_mb="lots"), "evacuation_plan: reserve_memory_mb: must be a number"),
    (lambda s: evacuation_plan(s, ["b"]), "evacuation_plan: destinations: must be a dict"),
    (lambda s: evacuation_plan(s, s, keep=["g1"]), "evacuation_plan: keep: must be a dict"),
    (lambda s: restore_plan(s, "a"), "restore_plan: homes: must be a list"),
    (lambda s: evacuation_plan({"a": {"hostname": "a"}}, s), "evacuation_plan: the node_info results are not as"),
])
def test_bad_filter_options_are_a_filter_error_naming_the_option(call, words):
    sources = {"a": node("a", [dom("g1")])}
    with pytest.raises(AnsibleFilterError, match=words):
        call(sources)
