"""scontrol output parsing, state derivation and planning (pure logic, recorded lines)."""

import os

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _slurm
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Context, StepFailed, execute

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "slurm")


def recorded(name):
    """(title, line) pairs of a recording: a ``## title`` comment before each line."""
    pairs, title = [], None
    with open(os.path.join(FIXTURES, name)) as handle:
        for line in handle:
            if line.startswith("## "):
                title = line[3:].strip()
            elif line.startswith("NodeName="):
                pairs.append((title, line.rstrip("\n")))
    return pairs


RECORDED = recorded("recorded-22.05.txt")
ODD = recorded("odd-lines.txt")


def node_of(line):
    return _slurm.node_from_fields(_slurm.split_fields(line))


def test_recordings_are_there():
    assert len(RECORDED) >= 8 and len(ODD) >= 9


@pytest.mark.parametrize("title,line", RECORDED + ODD, ids=[t for t, _unused in RECORDED + ODD])
def test_every_line_parses_to_a_named_node_with_a_state(title, line):
    node = node_of(line)
    assert node["name"] and node["state"] and node["summary"]
    assert node["summary"] in ("drained", "draining", "down", "idle", "mixed", "allocated", "unknown")


def test_reason_runs_to_end_of_line_with_spaces_and_equals():
    line = dict(RECORDED)["idle + drain = DRAINED; reason with spaces, = and parentheses"]
    node = node_of(line)
    assert node["reason"] == "hpcvirt: switching to space_shared (key=value, spaces)"
    assert node["reason_user"] == "root"
    assert node["reason_time"] == "2026-11-23T11:07:28"
    assert node["summary"] == "drained" and node["drain"] and not node["busy"]


def test_os_value_with_spaces_does_not_swallow_fields():
    fields = _slurm.split_fields(RECORDED[0][1])
    assert fields["OS"].startswith("Linux 6.18") and "#1 SMP" in fields["OS"]
    assert fields["RealMemory"] == "8035"
    assert fields["Gres"] == "(null)"


def test_reason_with_key_value_pairs_is_not_split_into_fields():
    node = node_of(ODD[0][1])
    assert node["reason"] == "hpcvirt: regime switch to time_shared failed: step=partition rc=2"
    assert node["state"] == "DOWN*+DRAIN"
    assert node["base_state"] == "DOWN" and node["state_flags"] == ["DRAIN"]
    assert not node["responding"] and node["summary"] == "drained"
    assert node["available_features"] == ["ib", "space_shared", "time_shared"]
    assert node["partitions"] == ["batch", "gpu"]


@pytest.mark.parametrize("state,summary,busy,responding", [
    ("IDLE", "idle", False, True),
    ("IDLE+DRAIN", "drained", False, True),
    ("MIXED+DRAIN", "draining", True, True),
    ("ALLOCATED+DRAIN", "draining", True, True),
    ("DOWN+DRAIN", "drained", False, True),
    ("DOWN*+DRAIN", "drained", False, False),
    ("IDLE*", "idle", False, False),
    ("IDLE+NOT_RESPONDING", "idle", False, False),
    ("MIXED+DRAIN+COMPLETING", "draining", True, True),
    ("IDLE+COMPLETING+DRAIN", "draining", True, True),
    ("DRAINED", "drained", False, True),
    ("DRAINING", "draining", True, True),
    ("DOWN", "down", False, True),
    ("IDLE+FAIL", "down", False, True),
    ("UNKNOWN", "unknown", False, True),
    ("idle~", "idle", False, True),
    (None, "unknown", False, True),
])
def test_state_derivation(state, summary, busy, responding):
    parsed = _slurm.parse_state(state)
    assert (parsed["summary"], parsed["busy"], parsed["responding"]) == (summary, busy, responding)


@pytest.mark.parametrize("value,expected", [
    ("(null)", []), ("", []), (None, []), ("a", ["a"]), ("space_shared,time_shared", ["space_shared", "time_shared"]),
    ("a, b,", ["a", "b"]),
])
def test_features(value, expected):
    assert _slurm.parse_features(value) == expected


def test_older_features_key_and_empty_active_features():
    older = node_of(dict(ODD)["older scontrol: derived state as base, no suffix on the reason"])
    assert older["available_features"] == ["space_shared", "time_shared"]
    assert older["reason"] == "maintenance window (ticket=4711)" and older["reason_user"] is None
    assert older["summary"] == "draining"
    cloud = node_of(dict(ODD)["powered down cloud node with a reboot pending"])
    assert cloud["active_features"] == [] and cloud["reason"] is None
    assert cloud["state_flags"] == ["CLOUD", "POWERED_DOWN", "REBOOT_REQUESTED"]


def test_parse_nodes_reads_several_lines():
    text = "\n".join(line for _unused, line in ODD) + "\n"
    nodes = _slurm.parse_nodes(text)
    assert sorted(nodes)[:3] == ["cn042", "cn043", "cn044"]
    assert nodes["cn043"]["available_features"] == []


@pytest.mark.parametrize("stderr,kind", [
    ("slurm_load_node error: Unable to contact slurm controller (connect failure)", "controller_unreachable"),
    ("Node node9 not found", "unknown_node"),
    ("slurm_update error: Invalid node name specified", "unknown_node"),
    ("slurm_update error: Invalid feature specification", "scontrol"),
])
def test_failures_are_classified(stderr, kind):
    assert _slurm.classify_failure(1, "", stderr, "node9").kind == kind


class FakeRun:
    """Replays scontrol answers and records the argv of each call (pure logic only)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        return self.answers.pop(0) if self.answers else (0, "", "")


IDLE = dict(RECORDED)["idle, features active through the helper"]
DRAINED = dict(RECORDED)["idle + drain = DRAINED; reason with spaces, = and parentheses"]
DRAINING = dict(RECORDED)["MIXED+DRAIN = DRAINING"]


def test_show_node_unknown_node_and_argv():
    run = FakeRun((1, "", "Node node9 not found"))
    with pytest.raises(_slurm.UnknownNode):
        _slurm.Scontrol(run, "/usr/bin/scontrol").show_node("node9")
    assert run.calls == [["/usr/bin/scontrol", "show", "node", "-o", "node9"]]


def test_plan_drain_then_features_then_resume_order():
    node = node_of(IDLE)
    plan = _slurm.plan_node(node, "drained", "hpcvirt: to space_shared", active_features=["space_shared"])
    assert [s.action for s in plan] == [_slurm.DRAIN, _slurm.FEATURES]
    assert plan.steps[1].after == {"active_features": "space_shared"}
    node = node_of(DRAINED)
    plan = _slurm.plan_node(node, "resumed", active_features=["space_shared"])
    assert [s.action for s in plan] == [_slurm.FEATURES, _slurm.RESUME]
    assert [s["action"] for s in plan.to_list()] == ["features", "resume"]


def test_plan_is_empty_when_nothing_differs():
    node = node_of(DRAINED)
    reason = "hpcvirt: switching to space_shared (key=value, spaces)"
    assert not _slurm.plan_node(node, "drained", reason, ["time_shared", "space_shared"], ["time_shared"])
    assert not _slurm.plan_node(node_of(IDLE), "resumed")


def test_plan_changes_reason_of_drained_node():
    plan = _slurm.plan_node(node_of(DRAINED), "drained", "new reason")
    assert [(s.action, s.after) for s in plan] == [(_slurm.REASON, "new reason")]


def test_managed_features_keep_static_ones():
    assert _slurm.scoped_features(["ib", "time_shared"], ["space_shared"], ["space_shared", "time_shared"]) == \
        ["ib", "space_shared"]
    node = node_of(ODD[0][1])  # ib,space_shared active
    assert not _slurm.plan_node(node, active_features=["space_shared"], managed=["space_shared", "time_shared"])
    plan = _slurm.plan_node(node, active_features=["time_shared"], managed=["space_shared", "time_shared"])
    assert [s.after for s in plan] == [{"active_features": "ib,time_shared"}]


def test_apply_plan_sends_both_feature_lists_in_one_update():
    node = node_of(IDLE)
    plan = _slurm.plan_node(node, "resumed", available_features=["a", "b"], active_features=["b"])
    run = FakeRun()
    execute(plan, Context(scontrol=_slurm.Scontrol(run)))
    assert run.calls == [["scontrol", "update", "nodename=node2", "activefeatures=b", "availablefeatures=a,b"]]


def test_drain_reason_is_one_argument():
    plan = _slurm.plan_node(node_of(IDLE), "drained", "a reason; with $(shell) chars")
    run = FakeRun()
    execute(plan, Context(scontrol=_slurm.Scontrol(run)))
    assert run.calls == [["scontrol", "update", "nodename=node2", "state=drain",
                          "reason=a reason; with $(shell) chars"]]


def test_wait_idle_times_out_with_a_clear_message():
    clock = iter([0.0, 0.0, 5.0, 11.0]).__next__
    run = FakeRun(*[(0, DRAINING, "")] * 4)
    with pytest.raises(_slurm.SlurmError, match="still runs jobs after 10 s .*MIXED\\+DRAIN.*stays drained"):
        _slurm.Scontrol(run).wait_idle("node2", 10, clock=clock, sleep=lambda s: None)


def test_wait_idle_returns_when_jobs_end():
    run = FakeRun((0, DRAINING, ""), (0, DRAINED, ""))
    node = _slurm.Scontrol(run).wait_idle("node2", 10, sleep=lambda s: None)
    assert node["summary"] == "drained"


PARAMS = dict(name="node2", state=None, reason=None, wait=False, timeout=600, available_features=None,
              active_features=None, managed_features=None)


def test_converge_drains_then_reads_the_node_again():
    run = FakeRun((0, IDLE, ""), (0, "", ""), (0, DRAINED, ""))
    result = _slurm.converge(_slurm.Scontrol(run), dict(PARAMS, state="drained", reason="why"))
    assert result["changed"] and result["node"]["summary"] == "drained" and result["before"]["summary"] == "idle"
    assert run.calls[1] == ["scontrol", "update", "nodename=node2", "state=drain", "reason=why"]
    assert "drain" in result["timings"]
    assert result["diff"]["before"] == {"drain node2": "idle"}


def test_converge_in_check_mode_only_reads():
    run = FakeRun((0, IDLE, ""))
    result = _slurm.converge(_slurm.Scontrol(run), dict(PARAMS, state="drained", reason="why"), check_mode=True)
    assert result["changed"] and len(run.calls) == 1 and result["node"] is result["before"]


def test_converge_refuses_features_that_are_not_available_and_changes_nothing():
    run = FakeRun((0, IDLE, ""))
    with pytest.raises(_slurm.SlurmRequestError, match="active_features: gpu not among"):
        _slurm.converge(_slurm.Scontrol(run), dict(PARAMS, active_features=["gpu"]))
    assert len(run.calls) == 1


def test_converge_rejects_an_empty_reason_and_a_negative_timeout():
    with pytest.raises(_slurm.SlurmRequestError, match="^reason:"):
        _slurm.converge(_slurm.Scontrol(FakeRun()), dict(PARAMS, state="drained", reason="  "))
    with pytest.raises(_slurm.SlurmRequestError, match="^timeout:"):
        _slurm.converge(_slurm.Scontrol(FakeRun()), dict(PARAMS, timeout=-1))


def test_a_failing_update_names_the_step_and_keeps_the_kind():
    run = FakeRun((0, IDLE, ""), (1, "", "Unable to contact slurm controller (connect failure)"))
    with pytest.raises(StepFailed, match="step 1 of 1 \\(drain node2\\): cannot reach slurmctld") as failed:
        _slurm.converge(_slurm.Scontrol(run), dict(PARAMS, state="drained", reason="why"))
    assert failed.value.error.details["error"] == "controller_unreachable"
    assert failed.value.error.details["before"]["summary"] == "idle"


def test_unknown_node_names_the_field():
    run = FakeRun((0, "", ""))
    with pytest.raises(_slurm.UnknownNode, match="^name: Slurm has no node named 'node2'") as failed:
        _slurm.converge(_slurm.Scontrol(run), PARAMS)
    assert failed.value.details["error"] == "unknown_node"
