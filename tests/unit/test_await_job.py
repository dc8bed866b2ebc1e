"""await_job's remote half: progress lines from the journals node_regime and fleet keep."""

from ansible_collections.hpcvirt.regime.plugins.modules import await_job as aj


def test_regime_progress_counts_steps_and_names_the_next():
    journal = {"target": "space_shared", "steps": ["preempt demo-2: 'running' -> 'saved'",
                                                   "hugepages node0: 0 -> 16", "drop demo-1: 'shared' -> 'p1'"],
               "done": 1}
    progress = aj.regime_progress(journal)
    assert (progress["done"], progress["total"]) == (1, 3)
    assert progress["text"] == "step 1 of 3 done; next: hugepages node0: 0 -> 16"
    assert aj.regime_progress({"steps": ["x"], "done": 1})["text"] == "step 1 of 1 done"
    assert aj.regime_progress(None)["done"] is None
    long = aj.regime_progress({"steps": ["y" * 500], "done": 0})["text"]
    assert len(long) < 160 and long.endswith("...")


def test_fleet_progress_by_phase():
    assert aj.fleet_progress({"phase": "define", "progress": {"overlays": 200, "defined": 150}}, None)["text"] == \
        "define: 200 overlays created, 150 members defined"
    start = aj.fleet_progress({"phase": "start", "progress": {"overlays": 4, "defined": 20},
                               "started_members": ["a", "b", "c", "d"]}, 3)
    assert start["text"] == "start: 4 overlays created, 20 members defined, 3 of 4 running"
    assert (start["done"], start["total"]) == (3, 4)
    assert aj.fleet_progress({"phase": "remove"}, None)["text"] == "remove: under way"
    assert aj.fleet_progress(None, None)["phase"] == "validating"


def test_journal_reading_survives_garbage(tmp_path):
    path = tmp_path / "j.json"
    path.write_text("{not json")
    assert aj.read_journal(str(path)) is None
    assert aj.read_journal(str(tmp_path / "missing.json")) is None
    path.write_text('{"done": 2, "steps": ["a", "b", "c"]}')
    assert aj.regime_progress(aj.read_journal(str(path)))["text"] == "step 2 of 3 done; next: c"
