"""Pure logic of checkpoints: plans, snapshot XML, the revert fallback's XML surgery."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _checkpoint as ck
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Plan


def guest(**over):
    base = {"name": "g", "active": True, "persistent": True, "managed_save": False, "state": "running",
            "snapshots": [], "checkpoint": {}}
    base.update(over)
    return base


def actions(g, state, snapshot=None, force=False):
    return [s.name for s in ck.plan_checkpoint(Plan(), g, state, snapshot, force)]


def test_preempt_and_resume_plans():
    assert actions(guest(), "preempted") == ["preempt"]
    assert actions(guest(active=False, managed_save=True, state="shutoff"), "preempted") == []
    assert actions(guest(active=False, managed_save=True, state="shutoff"), "resumed") == ["resume"]
    assert actions(guest(), "resumed") == []
    with pytest.raises(ck.CheckpointError, match="no saved state"):
        actions(guest(active=False, state="shutoff"), "resumed")


def test_snapshot_plans():
    assert actions(guest(), "present", "s1") == ["snapshot"]
    assert actions(guest(snapshots=["s1"]), "present", "s1") == []
    assert actions(guest(snapshots=["s1"]), "absent", "s1") == ["delete_snapshot"]
    assert actions(guest(), "absent", "s1") == []
    with pytest.raises(ck.CheckpointError, match="no snapshot 's1'"):
        actions(guest(), "reverted", "s1")


def test_revert_is_done_once_unless_forced():
    g = guest(snapshots=["s1"])
    assert actions(g, "reverted", "s1") == ["revert"]
    g["checkpoint"] = {"state": "reverted", "reverted_to": "s1"}
    assert actions(g, "reverted", "s1") == []
    assert actions(g, "reverted", "s1", force=True) == ["revert"]


def test_snapshot_xml_external_with_memory():
    files = ck.snapshot_files("/d", "g", "s1", {"vda": "/d/g.qcow2"})
    assert files == {"memory": "/d/g.s1.mem", "disks": {"vda": "/d/g.s1.vda.qcow2"}}
    xml = ck.snapshot_xml("s1", files, "why")
    parsed = ck.parse_snapshot_xml(xml)
    assert parsed["memory"] == "/d/g.s1.mem" and parsed["overlays"] == {"vda": "/d/g.s1.vda.qcow2"}
    disk_only = ck.snapshot_xml("s2", ck.snapshot_files("/d", "g", "s2", {"vda": "x"}, memory=False))
    assert "<memory snapshot=\"no\" />" in disk_only


SNAPSHOT = """<domainsnapshot><name>s1</name><state>running</state>
<memory snapshot='external' file='/d/g.s1.mem'/>
<disks><disk name='vda' snapshot='external'><source file='/d/g.s1.vda.qcow2'/></disk></disks>
<domain><devices><disk type='file' device='disk'><source file='/d/g.qcow2'/><target dev='vda'/></disk></devices>
</domain></domainsnapshot>"""


def test_parse_snapshot_finds_snapshot_time_images():
    parsed = ck.parse_snapshot_xml(SNAPSHOT)
    assert parsed["originals"] == {"vda": "/d/g.qcow2"} and parsed["state"] == "running"


def test_retarget_disks_drops_the_backing_chain():
    xml = """<domain><devices><disk type='file' device='disk'><source file='/d/g.qcow2'/>
    <backingStore type='file'><source file='/m.qcow2'/></backingStore><target dev='vda'/></disk>
    <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/><readonly/></disk></devices></domain>"""
    out = ck.retarget_disks(xml, {"vda": "/d/g.s1.vda.qcow2"})
    assert "/d/g.s1.vda.qcow2" in out and "backingStore" not in out and "/x.iso" in out
    assert ck.writable_disks(out) == {"vda": "/d/g.s1.vda.qcow2"}


def test_record_keeps_the_reason():
    rec = ck.checkpoint_record({"reason": "job 1"}, "resume")
    assert rec["state"] == "resumed" and rec["reason"] == "job 1" and rec["at"].endswith("+00:00")
    assert ck.checkpoint_record({}, "revert", snapshot="s1")["reverted_to"] == "s1"


def test_plans_are_typed_steps_of_the_checkpoint_actions():
    plan = ck.plan_checkpoint(Plan(), guest(), "preempted")
    assert plan.steps[0].action is ck.PREEMPT and plan.to_list()[0]["action"] == "preempt"
    plan = ck.plan_checkpoint(Plan(), guest(snapshots=["s1"]), "reverted", "s1")
    assert plan.steps[0].action is ck.REVERT and plan.steps[0].detail["snapshot"] == "s1"


@pytest.mark.parametrize("state,snapshot,over,after", [
    ("preempted", None, {}, {"state": "shutoff", "managed_save": True, "snapshots": [], "checkpoint": "preempted"}),
    ("resumed", None, {"active": False, "state": "shutoff", "managed_save": True},
     {"state": "running", "managed_save": False, "snapshots": [], "checkpoint": "resumed"}),
    ("present", "s2", {"snapshots": ["s1"]},
     {"state": "running", "managed_save": False, "snapshots": ["s1", "s2"], "checkpoint": "snapshotted"}),
    ("absent", "s1", {"snapshots": ["s1"]},
     {"state": "running", "managed_save": False, "snapshots": [], "checkpoint": "snapshot_deleted"}),
])
def test_diff_after_is_the_predicted_state(state, snapshot, over, after):
    g = guest(**over)
    plan = ck.plan_checkpoint(Plan(), g, state, snapshot)
    assert ck.predict(g, plan) == after
    assert ck.guest_state(g)["snapshots"] == g["snapshots"]


def test_nothing_to_do_predicts_the_state_as_it_is():
    g = guest(checkpoint={"state": "resumed"})
    assert ck.predict(g, ck.plan_checkpoint(Plan(), g, "resumed")) == ck.guest_state(g)


@pytest.mark.parametrize("name", ["a/b", "", " s", "../x", "x" * 65, "-x", "s 1"])
def test_snapshot_names_that_would_be_bad_file_names_are_refused(name):
    with pytest.raises(ck.CheckpointError, match="^snapshot: "):
        ck.check_snapshot_name(name)


def test_good_snapshot_names_pass():
    for name in ("before-upgrade", "s1", "a.b_c"):
        ck.check_snapshot_name(name)
