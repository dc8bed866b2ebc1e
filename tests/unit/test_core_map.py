"""The core map: the model from node_info results, its HTML page, its text view; the report texts."""

import html.parser
import json
import re

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.hpcvirt.regime.plugins.filter.core_map import (
    core_map, core_map_html, core_map_text, iter_cpus, node_map_text, parse_cpulist)
from ansible_collections.hpcvirt.regime.plugins.filter.report_text import (
    evacuate_report_text, fleet_report, migration_batch_text, regime_report, text_table, timings_text)

from core_map_fixtures import big_node, guest, small_node

HOSTILE = '<img src=x onerror="alert(1)">&"\'</td><script>alert(2)</script>'


class Page(html.parser.HTMLParser):
    """Elements of a page by tag and class, with their attributes, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.elements = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def having(self, tag, cls=None, attr=None):
        return [a for t, a in self.elements if t == tag and (cls is None or cls in (a.get("class") or "").split())
                and (attr is None or attr in a)]


def parse(text):
    page = Page()
    page.feed(text)
    return page


def model(**extras):
    return core_map({"node1": big_node(), "node2": small_node([guest("hk-web", ["0-1"], "shared")])},
                    extras, now="2026-12-02T05:00:00+00:00")


def test_model_places_every_cpu_by_socket_numa_and_core():
    node = model()["nodes"][0]
    assert node["cpu_count"] == 16
    assert [s["id"] for s in node["sockets"]] == [0, 1]
    assert [n["id"] for n in node["sockets"][1]["numa_nodes"]] == [1]
    cores = node["sockets"][0]["numa_nodes"][0]["cores"]
    # SMT siblings together: core 1 of socket 0 holds CPUs 1 and 9.
    assert [[c["id"] for c in core["cpus"]] for core in cores] == [[0, 8], [1, 9], [2, 10], [3, 11]]
    roles = {cpu["id"]: (cpu["role"], cpu["partition"]) for cpu in iter_cpus(node)}
    assert roles[0] == ("housekeeping", None)
    assert roles[9] == ("partition", "p1")
    assert roles[13] == ("partition", "p2")
    assert roles[15] == ("pool", None)
    assert roles[4] == ("unassigned", None)


def test_model_puts_dedicated_guests_on_their_cpus_and_counts_partitions():
    result = model()
    node = result["nodes"][0]
    on = {cpu["id"]: [g["name"] for g in cpu["guests"]] for cpu in iter_cpus(node)}
    assert on[1] == on[2] == on[9] == on[10] == ["mpi-0"]
    assert on[3] == []   # shared guests float over the pool, not on a CPU
    assert result["summary"]["partitions"] == {"total": 2, "used": 1, "free": 1}
    assert result["summary"]["guests"]["placement"] == {"dedicated": 1, "shared": 3, "custom": 0}
    assert result["summary"]["regimes"] == {"mixed": 1, "time_shared": 1}
    assert result["summary"]["cpus"] == 18
    # An uncarved node: every CPU is housekeeping and pool.
    assert {c["role"] for c in iter_cpus(result["nodes"][1])} == {"housekeeping+pool"}


def test_model_carries_transition_heartbeats_and_detours():
    transition = {"regime": "mixed", "changed": True, "plan": [{}, {}, {}],
                  "timings": {"read": 20.0, "plan": 3.5, "drop": 40.25},
                  "guests": [{"name": "mpi-0", "fate": "placed", "live_ms": 12.34}]}
    migrations = [{"name": "web-1", "from": "node1", "to": "node3", "ok": True, "downtime_ms": 65.0}]
    result = model(node1={"transition": transition, "heartbeats": {"mpi-0": {"max_gap_ms": 181.0}},
                          "migrations": migrations})
    node = result["nodes"][0]
    assert node["transition"]["steps"] == 3
    assert node["transition"]["total_ms"] == 63.8
    guests = {g["name"]: g for g in node["guests"]}
    assert guests["mpi-0"]["max_gap_ms"] == 181.0
    assert guests["mpi-0"]["fate"] == "placed"
    assert guests["web-1"]["detour"] == "migrated to node3 (downtime 65.0 ms)"
    assert guests["web-2"]["detour"] == "away from home rack2-n01"
    json.dumps(result)   # the JSON beside the page


def test_html_draws_every_cpu_and_guest():
    result = model()
    page = parse(core_map_html(result))
    cpus = page.having("div", "cpu", "data-cpu")
    assert len(cpus) == 18
    assert len(page.having("div", "core")) == 8 + 2
    assert len(page.having("div", "socket")) == 3
    assert len(page.having("div", "numa")) == 3
    # mpi-0 on its 4 CPUs, the three shared guests over their pools.
    assert [a["data-guest"] for a in page.having("span", "guest") if a["data-guest"] == "mpi-0"] == ["mpi-0"] * 4
    pool = [a["data-guest"] for a in page.having("span", "guest") if "data-vcpu" not in a]
    assert sorted(pool) == ["hk-web", "web-1", "web-2"]
    roles = [a["data-role"] for a in cpus]
    assert roles.count("partition") == 8 and roles.count("pool") == 4 and roles.count("housekeeping+pool") == 2
    sections = page.having("section", "node")
    assert [(s["data-host"], s["data-cpus"], s["data-guests"]) for s in sections] == [
        ("node1", "16", "3"), ("node2", "2", "1")]


def test_html_is_self_contained():
    text = core_map_html(model())
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"<script|<link|<img|src=|href=|url\(|@import", text, re.I)


def test_hostile_names_are_escaped_everywhere():
    node = big_node(guests=[guest(HOSTILE, ["1"], "dedicated", "p1"), guest(HOSTILE + "2", ["3"], "shared")],
                    hostname=HOSTILE)
    node["layout"]["partitions"][0]["name"] = HOSTILE
    node["regime"]["name"] = HOSTILE
    result = core_map({HOSTILE: node}, {HOSTILE: {"detours": {HOSTILE: HOSTILE},
                                                  "transition": {"regime": HOSTILE, "timings": {HOSTILE: 1}}}})
    text = core_map_html(result, title=HOSTILE)
    page = parse(text)
    assert not page.having("script") and not page.having("img")
    assert not [a for dummy, a in page.elements if any(k.startswith("on") for k in a)]
    assert "<script>" not in text and "<img" not in text
    assert HOSTILE in "".join(page.text)          # shown, as text
    assert [a["data-guest"] for a in page.having("span", "guest")][0] == HOSTILE


def test_text_view_one_line_per_node():
    text = core_map_text(model(), guests=False)
    lines = text.splitlines()
    node1 = [line for line in lines if line.startswith("node1 ")]
    assert len(node1) == 1
    assert "s0[n0 hh AA AA ..] s1[n1 -- bb bb ..]" in node1[0]
    assert "s0[n0 ::]" in [line for line in lines if line.startswith("node2 ")][0]
    assert "A partition p1" in text and "B partition p2" in text
    assert not any(line != line.rstrip() for line in lines)
    assert "{" not in text and "[" not in text.replace("s0[", "").replace("s1[", "")


def test_text_view_without_smt_packs_cores():
    assert node_map_text(model()["nodes"][1]) == "s0[n0 ::]"


def test_text_view_guest_tables_are_aligned():
    text = core_map_text(model())
    rows = [line for line in text.splitlines() if line.startswith("  ")]
    header = rows[0]
    assert header.split()[:3] == ["guest", "state", "placement"]
    col = header.index("placement")
    assert all(row[col - 2:col] == "  " for row in rows[2:5])


def test_bad_input_names_the_problem():
    with pytest.raises(AnsibleFilterError, match="node_info result"):
        core_map({"n": {"topology": {"online": "0-x"}}})
    with pytest.raises(AnsibleFilterError, match="expects"):
        core_map([])
    with pytest.raises(AnsibleFilterError):
        core_map_html({})
    assert parse_cpulist("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(ValueError):
        parse_cpulist("3-1")


def test_text_table_aligns_and_right_aligns_numbers():
    out = text_table([["a", 1.5, "12.0 ms"], ["long-name", 10, "3.1 ms"]], headers=["name", "n", "time"])
    lines = out.splitlines()
    assert lines == ["name         n     time",
                     "---------  ---  -------",
                     "a          1.5  12.0 ms",
                     "long-name   10   3.1 ms"]
    assert text_table([{"x": 1, "y": "b"}]).splitlines()[0] == "x  y"


def test_timings_text():
    assert timings_text({"read": 22.778, "plan": 3.5}) == "read 22.8 ms, plan 3.5 ms (total 26.3 ms)"
    assert timings_text({"start": 12500}) == "start 12.5 s (total 12.5 s)"
    assert timings_text({}) == "no timings"


def test_regime_report_is_sentences_with_fates_as_lines():
    result = {"regime": "space_shared", "changed": True, "plan": [{}] * 5, "timings": {"read": 22.778, "drop": 10},
              "guests": [{"name": "demo-1", "fate": "placed", "live_ms": 41.2,
                          "placement": {"mode": "dedicated", "partition": "p1", "cpus": "1"}},
                         {"name": "demo-2", "fate": "preempted", "reason": "no pool on a space-shared node"}],
              "reboot_required": False}
    text = regime_report(result, "node1", slurm_told=True)
    assert text.splitlines() == [
        "node1 is space_shared: changed, 5 steps.",
        "Timings: read 22.8 ms, drop 10.0 ms (total 32.8 ms).",
        "Guests:",
        "  demo-1: placed, dedicated on partition p1, CPUs 1, live changes 41.2 ms",
        "  demo-2: preempted (saved to disk): no pool on a space-shared node",
        "Slurm: drained before, switched and resumed after.",
    ]


def test_fleet_and_evacuation_texts():
    fleet = {"item": {"name": "f"}, "counts": {"create": 20, "update": 0, "keep": 0, "remove": 0, "start": 4},
             "timings": {"validate": 10, "define": 200},
             "members": [{"name": "f-%02d" % i, "action": "create", "state": "running" if i <= 4 else "shutoff",
                          "hostname": "n%02d" % i, "addresses": {"net0": "10.0.0.%d" % i}} for i in range(1, 21)]}
    text = fleet_report(fleet, "node1", members=5)
    assert text.splitlines()[0] == "node1: fleet f: 20 created, 0 updated, 0 kept, 0 removed, 4 started."
    assert "... and 15 more." in text and "'" not in text
    batch = [{"name": "g1", "from": "a", "to": "b", "ok": True, "downtime_ms": 61.0},
             {"name": "g2", "from": "a", "to": "b", "ok": False, "msg": "no memory", "guest_on": "source"}]
    assert migration_batch_text(batch, 4, 6, 12.25, 2, 3).splitlines() == [
        "Batch 2 of 3: 1 migrated, 1 failed; 4 of 6 migrations done, 12.2 s elapsed.",
        "  g1: a -> b, migrated (downtime 61.0 ms)",
        "  g2: a -> b, FAILED (no memory); the guest is on the source"]
    text = evacuate_report_text({"migrated": {"g1": "b"}, "preempted": ["g3"], "failed": [], "stayed": ["g4"]}, "a")
    assert text.splitlines()[0] == "a: 1 migrated, 1 preempted, 0 failed, 1 stay."
