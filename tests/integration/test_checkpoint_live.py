"""Preempt/resume and external snapshots of a real guest on the real libvirtd."""

import glob
import os
import time

import pytest

import testbed
from conftest import run_module

MODULE = "hpcvirt.regime.checkpoint"


def checkpoint(name, state, check=False, **extra):
    args = {"name": name, "state": state}
    args.update(extra)
    return run_module(MODULE, args, check=check, diff=True)


def test_preempted_guest_resumes_where_it_stopped(conn, guest_factory):
    name = "hpcvirt-mig-preempt"
    guest_factory(name)
    before = testbed.wait_for_beats(name, 3)

    checked = checkpoint(name, "preempted", check=True)
    assert checked["changed"] and [s["action"] for s in checked["plan"]] == ["preempt"], checked
    assert conn.lookupByName(name).isActive()

    saved = checkpoint(name, "preempted", reason="job 4711")
    assert saved["changed"] and not saved.get("failed"), saved.get("msg")
    dom = conn.lookupByName(name)
    assert not dom.isActive() and dom.hasManagedSaveImage(0)
    assert saved["checkpoint"]["state"] == "preempted" and saved["checkpoint"]["reason"] == "job 4711"
    last = testbed.read_beats(name)[-1]
    assert last["seq"] >= before["seq"]
    assert not checkpoint(name, "preempted")["changed"]
    time.sleep(1)
    assert testbed.read_beats(name)[-1] == last  # really stopped

    resumed = checkpoint(name, "resumed")
    assert resumed["changed"] and not resumed.get("failed"), resumed.get("msg")
    assert conn.lookupByName(name).isActive()
    after = testbed.wait_for_beats(name, 3)
    assert after["boot"] == last["boot"], "the guest rebooted instead of resuming"
    assert after["seq"] > last["seq"]
    beats = [b for b in testbed.read_beats(name) if b["boot"] == last["boot"]]
    assert all(b2["seq"] > b1["seq"] for b1, b2 in zip(beats, beats[1:])), "the counter went backwards"
    # The metadata the guest carries says what happened, with the reason given at preemption.
    assert resumed["checkpoint"]["state"] == "resumed" and resumed["checkpoint"]["reason"] == "job 4711"
    assert not checkpoint(name, "resumed")["changed"]


def test_resume_refuses_to_boot_afresh(conn, guest_factory):
    name = "hpcvirt-mig-cold"
    dom = guest_factory(name)
    dom.destroy()
    refused = checkpoint(name, "resumed")
    assert refused.get("failed") and "no saved state" in refused["msg"], refused
    assert not conn.lookupByName(name).isActive()


@pytest.fixture
def snapshot_files():
    """Snapshot files of hpcvirt-mig-snap are removed even when the test fails half-way."""
    pattern = os.path.join(testbed.INSTANCE_DIR, "hpcvirt-mig-snap.*.*")
    yield pattern
    for path in glob.glob(pattern):
        os.unlink(path)


def test_snapshot_create_revert_delete(conn, guest_factory, snapshot_files):
    name = "hpcvirt-mig-snap"
    guest_factory(name)
    testbed.wait_for_beats(name, 3)

    checked = checkpoint(name, "present", snapshot="s1", check=True)
    assert checked["changed"] and not conn.lookupByName(name).listAllSnapshots(0)
    made = checkpoint(name, "present", snapshot="s1")
    assert made["changed"] and not made.get("failed"), made.get("msg")
    memory = made["files"]["memory"]
    overlay = made["files"]["disks"]["vda"]
    assert os.path.exists(memory) and os.path.exists(overlay)
    assert made["guest"]["snapshots"] == ["s1"] and made["guest"]["active"]
    at_snapshot = testbed.read_beats(name)[-1]
    assert not checkpoint(name, "present", snapshot="s1")["changed"]

    testbed.wait_for_beats(name, 20)
    moved_on = testbed.read_beats(name)[-1]
    reverted = checkpoint(name, "reverted", snapshot="s1")
    assert reverted["changed"] and not reverted.get("failed"), reverted.get("msg")
    assert conn.lookupByName(name).isActive()
    beat = testbed.wait_for_beats(name, 2)
    assert beat["boot"] == at_snapshot["boot"], "reverting rebooted the guest"
    # Back in time: the counter restarts from (about) where the snapshot was taken.
    assert beat["seq"] < moved_on["seq"]
    assert not checkpoint(name, "reverted", snapshot="s1")["changed"]

    deleted = checkpoint(name, "absent", snapshot="s1")
    assert deleted["changed"] and not deleted.get("failed"), deleted.get("msg")
    assert not os.path.exists(memory) and not os.path.exists(overlay)
    dom = conn.lookupByName(name)
    assert not dom.listAllSnapshots(0) and dom.isActive()
    assert not checkpoint(name, "absent", snapshot="s1")["changed"]
    testbed.wait_for_beats(name, 3)
