"""The one executor: order, check mode, journal, timings, failures, and the error choke point."""

import json
import os

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError, describe
from ansible_collections.hpcvirt.regime.plugins.module_utils._journal import Journal, JournalError
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import (
    Action,
    Context,
    Plan,
    StepFailed,
    Timings,
    execute,
)


def recorder(log, fail_on=None):
    def run(ctx, step):
        if step.target == fail_on:
            raise OSError(13, "Permission denied", step.target)
        log.append((step.target, step.after, [s.target for s in ctx.done]))
        return {"seen": step.after}
    return run


def three_step_plan(log, fail_on=None):
    write = Action("write", recorder(log, fail_on), phase="carve")
    plan = Plan()
    for target in ("a", "b", "c"):
        plan.add(write, target, None, target.upper())
    return plan


def test_steps_run_in_order_and_record_results_and_timings():
    log = []
    plan = three_step_plan(log)
    timings = Timings()
    assert execute(plan, Context(), False, timings) == 3
    assert log == [("a", "A", []), ("b", "B", ["a"]), ("c", "C", ["a", "b"])]
    assert [s.result for s in plan] == [{"seen": "A"}, {"seen": "B"}, {"seen": "C"}]
    assert all(s.ms is not None for s in plan) and set(timings.to_dict()) == {"carve"}


def test_check_mode_runs_nothing_and_writes_no_journal(tmp_path):
    log = []
    plan = three_step_plan(log)
    journal = Journal("t", str(tmp_path))
    assert execute(plan, Context(), True, Timings(), journal=journal) == 0
    assert log == [] and not os.path.exists(str(tmp_path / "var"))
    assert all(s.ms is None for s in plan)


def test_a_failing_step_names_itself_and_leaves_the_journal(tmp_path):
    log = []
    plan = three_step_plan(log, fail_on="b")
    journal = Journal("t", str(tmp_path), target="x")
    with pytest.raises(StepFailed) as caught:
        execute(plan, Context(), False, Timings(), journal=journal)
    assert caught.value.index == 1 and [t for t, _a, _d in log] == ["a"]
    assert str(caught.value) == "step 2 of 3 (write b): b: Permission denied"
    left = json.load(open(journal.path))
    assert left["done"] == 1 and left["target"] == "x" and len(left["steps"]) == 3
    msg, extra = describe(caught.value)
    assert msg.endswith("(the steps before it were applied; run again to converge from here)")
    assert extra["steps_done"] == 1 and extra["failed_step"] == 2 and extra["changed"] is True


def test_a_completed_plan_removes_its_journal_and_phases_rename_timings(tmp_path):
    log = []
    plan = three_step_plan(log)
    journal = Journal("t", str(tmp_path))
    timings = Timings()
    execute(plan, Context(), False, timings, journal=journal, phases={plan.steps[0].action: "custom"})
    assert not os.path.exists(journal.path) and set(timings.to_dict()) == {"custom"}


def test_plan_steps_need_actions_and_filter_by_action():
    keep, other = Action("keep", lambda c, s: None), Action("other", lambda c, s: None)
    plan = Plan()
    plan.add(keep, "1")
    plan.add(other, "2")
    plan.add(keep, "3")
    assert [s.target for s in plan.of(keep)] == ["1", "3"]
    assert plan.to_list()[1] == {"action": "other", "target": "2", "before": None, "after": None}


@pytest.mark.parametrize("exc, words", [
    (HpcvirtError("partitions[0].cpus: CPUs 9 are not online"), "partitions[0].cpus: CPUs 9 are not online"),
    (OSError(28, "No space left on device", "/var/lib/hpcvirt/x"), "/var/lib/hpcvirt/x: No space left on device"),
    (ZeroDivisionError("division by zero"), "internal error (ZeroDivisionError): division by zero"),
])
def test_the_choke_point_turns_any_error_into_a_message(exc, words):
    msg, _extra = describe(exc)
    assert msg.startswith(words)


def test_journal_names_are_plain_file_names(tmp_path):
    for bad in ("", "../x", "a/b", ".hidden", "x" * 201):
        with pytest.raises(JournalError):
            Journal(bad, str(tmp_path))


def test_an_unwritable_journal_is_a_clear_error(tmp_path):
    # The journal directory's place is taken by a file: no journal can be written there, even by root.
    (tmp_path / "var/lib/hpcvirt").mkdir(parents=True)
    (tmp_path / "var/lib/hpcvirt/journal").write_text("not a directory")
    journal = Journal("t", str(tmp_path))
    with pytest.raises(JournalError, match="journal .*t.json: File exists"):
        journal.update(x=1)
