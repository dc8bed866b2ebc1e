"""Regime composition: layout validation, default placements, overflow, resume, journal."""

import json
import os

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._journal import Journal, NodeLock
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan
from ansible_collections.hpcvirt.regime.plugins.module_utils._regime import (
    PREEMPT,
    RegimeError,
    check_regime,
    default_request,
    plan_regime,
    predicted_pins,
    record_changes,
    write_regime,
)

SPACE = {"housekeeping": "0", "pool": "0", "partitions": [{"name": "p1", "cpus": "1", "mems": "0"}]}
TIME = {"housekeeping": "0", "pool": "1", "partitions": []}
MIXED = {"housekeeping": "0", "pool": "1-2", "partitions": [{"name": "p3", "cpus": "3", "mems": "0"}]}


def guest(name, pins, active=True, placement=None, observed="shared", partition=None, checkpoint=None,
          managed_save=False):
    hpcvirt = {}
    if placement:
        hpcvirt["placement"] = placement
    if checkpoint:
        hpcvirt["checkpoint"] = checkpoint
    return {"name": name, "active": active, "persistent": True, "managed_save": managed_save,
            "vcpus": {"current": len(pins), "maximum": len(pins)},
            "vcpu_pins": {str(i): p for i, p in enumerate(pins)}, "emulator_pin": "0-3", "iothread_pins": {},
            "scheduler": {"cpu_shares": 1024, "vcpu_quota": -1}, "numatune": {}, "hpcvirt": hpcvirt,
            "placement": {"observed": observed, "partition": partition}}


@pytest.mark.parametrize("regime, layout, words", [
    ("time_shared", SPACE, "a time_shared node has no partitions (got p1)"),
    ("space_shared", TIME, "needs at least one partition"),
    ("space_shared", MIXED, "keeps no shared pool beyond housekeeping (the layout leaves CPUs 1,2"),
    ("mixed", SPACE, "pool beyond housekeeping: none"),
    ("mixed", TIME, "partitions: none"),
])
def test_layout_must_amount_to_the_regime(regime, layout, words):
    with pytest.raises(RegimeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_regime(regime, layout)


@pytest.mark.parametrize("regime, layout", [("space_shared", SPACE), ("time_shared", TIME), ("mixed", MIXED)])
def test_matching_layouts_pass(regime, layout):
    check_regime(regime, layout)


def test_unnamed_guests_keep_a_surviving_partition_or_go_to_the_pool():
    dedicated = guest("d", ["3"], observed="dedicated", partition="p3")
    assert default_request("mixed", dedicated, MIXED) == {"name": "d", "placement": "dedicated", "partition": "p3"}
    assert default_request("time_shared", dedicated, TIME) == {"name": "d", "placement": "shared"}
    assert default_request("mixed", guest("s", ["1-2"]), MIXED) == {"name": "s", "placement": "shared"}


def test_space_shared_with_a_shared_guest_fails_by_default_and_names_it():
    guests = [guest("enclave", ["0-1"]), guest("web", ["0-1"])]
    requested = {"enclave": {"name": "enclave", "placement": "dedicated", "partition": "p1"}}
    with pytest.raises(RegimeError, match=r"web \(a space_shared node has no shared pool\)"):
        plan_regime("space_shared", SPACE, guests, requested)


def test_overflow_preempt_saves_the_guests_that_do_not_fit():
    guests = [guest("enclave", ["0-1"]), guest("web", ["0-1"]), guest("idle", ["0-1"], active=False)]
    requested = {"enclave": {"name": "enclave", "placement": "dedicated", "partition": "p1"}}
    decision = plan_regime("space_shared", SPACE, guests, requested, overflow="preempt")
    assert decision["preempt"] == ["web"]
    assert list(decision["placements"]) == ["enclave"]
    assert decision["untouched"] == {"idle": "a space_shared node has no shared pool"}
    assert predicted_pins(guests, decision["placements"], {"web"}) == {"enclave": [{1}]}


def test_guests_we_preempted_are_resumed_where_they_fit_again():
    saved = guest("web", ["0"], active=False, managed_save=True,
                  checkpoint={"state": "preempted", "by": "node_regime"})
    other = guest("theirs", ["0"], active=False, managed_save=True, checkpoint={"state": "preempted"})
    enclave = guest("enclave", ["1"], observed="dedicated", partition="p1",
                    placement={"mode": "dedicated", "partition": "p1"})
    decision = plan_regime("time_shared", TIME, [saved, other, enclave], {})
    assert decision["resume"] == ["web"]                      # not a guest someone else saved
    assert decision["placements"]["web"][1]["mode"] == "shared"
    assert decision["placements"]["enclave"][1]["mode"] == "shared"


def test_a_saved_pool_guest_whose_old_pins_match_a_partition_stays_saved():
    # Saved from a time_shared node whose pool was CPU 1; CPU 1 is partition p1 now.
    saved = guest("web", ["1"], active=False, managed_save=True, observed="dedicated", partition="p1",
                  placement={"mode": "shared"}, checkpoint={"state": "preempted", "by": "node_regime"})
    enclave = guest("enclave", ["1"], observed="dedicated", partition="p1",
                    placement={"mode": "dedicated", "partition": "p1"})
    requested = {"enclave": {"name": "enclave", "placement": "dedicated", "partition": "p1"}}
    assert default_request("space_shared", saved, SPACE) == {"name": "web", "placement": "shared"}
    for order in ([saved, enclave], [enclave, saved]):
        decision = plan_regime("space_shared", SPACE, order, requested, overflow="preempt")
        assert list(decision["placements"]) == ["enclave"] and decision["preempt"] == []
        assert decision["resume"] == [] and "web" in decision["untouched"]


def test_a_named_guest_wins_a_partition_over_an_inferred_claim():
    saved = guest("old", ["1"], active=False, managed_save=True,
                  placement={"mode": "dedicated", "partition": "p1"}, checkpoint={"state": "preempted", "by": "node_regime"})
    named = guest("new", ["0-1"])
    requested = {"new": {"name": "new", "placement": "dedicated", "partition": "p1"}}
    decision = plan_regime("space_shared", SPACE, [saved, named], requested, overflow="preempt")
    assert list(decision["placements"]) == ["new"] and decision["resume"] == []


def test_unknown_guest_is_refused():
    with pytest.raises(RegimeError, match="no guest 'ghost'"):
        plan_regime("time_shared", TIME, [], {"ghost": {"name": "ghost", "placement": "shared"}})


def test_refused_drop_with_preempt():
    holder = guest("a", ["1"], observed="dedicated", partition="p1", placement={"mode": "dedicated", "partition": "p1"})
    second = guest("b", ["0-1"])
    requested = {"a": {"name": "a", "placement": "dedicated", "partition": "p1"},
                 "b": {"name": "b", "placement": "dedicated", "partition": "p1"}}
    decision = plan_regime("space_shared", SPACE, [holder, second], requested, overflow="preempt")
    assert decision["preempt"] == ["b"] and "CPU 1 used by a" in decision["unfit"]["b"]


def test_regime_record_and_journal(tmp_path):
    root = str(tmp_path)
    layout = {"housekeeping": "0", "pool": "0", "partitions": [{"name": "p1"}]}
    before, after = record_changes(None, "space_shared", layout)
    assert before is None and after["regime"] == "space_shared" and after["partitions"] == ["p1"]
    write_regime(root, after)
    recorded = json.load(open(os.path.join(root, "var/lib/hpcvirt/regime.json")))
    assert recorded["changed_at"].endswith("+00:00")
    assert record_changes(recorded, "space_shared", layout) is None      # idempotent, whatever the time
    assert record_changes(recorded, "time_shared", layout)[1]["regime"] == "time_shared"

    journal = Journal("node_regime", root, target="space_shared")
    assert journal.previous() is None
    plan = Plan()
    for name in ("a", "b", "c"):
        plan.add(PREEMPT, name, "running", "preempted (managed save)")
    journal.begin(plan)
    journal.step_done(2)
    again = Journal("node_regime", root).previous()
    assert again["target"] == "space_shared" and again["done"] == 2
    assert [line.split(" ")[1].rstrip(":") for line in again["steps"]] == ["a", "b", "c"]
    assert oct(os.stat(journal.path).st_mode & 0o777) == "0o600"
    journal.finish()
    assert Journal("node_regime", root).previous() is None


def test_the_node_lock_excludes_a_second_change(tmp_path):
    root = str(tmp_path)
    with NodeLock(root):
        with pytest.raises(Exception, match="holds the node lock .* for more than 0 s"):
            with NodeLock(root, timeout=0):
                pass
    with NodeLock(root, timeout=0):     # released: free again
        pass


def test_a_torn_journal_still_counts_as_an_interrupted_run(tmp_path):
    journal = Journal("node_regime", str(tmp_path))
    os.makedirs(os.path.dirname(journal.path))
    with open(journal.path, "w") as handle:
        handle.write('{"target": "space_')
    assert journal.previous()["unreadable"] is True
    json.dumps(journal.previous())


def test_unnamed_shared_guest_keeps_its_recorded_shares():
    tuned = guest("web", ["1"], placement={"mode": "shared", "cpu_shares": "256"})
    assert default_request("time_shared", tuned, TIME) == {"name": "web", "placement": "shared", "cpu_shares": 256}
    plan, _unused = plan_regime("time_shared", TIME, [tuned], {})["placements"]["web"]
    assert [s.action for s in plan] == ["pin_emulator", "scheduler"]    # intent kept, shares applied
