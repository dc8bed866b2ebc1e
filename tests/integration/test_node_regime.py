"""Whole-node regime changes on this machine's real libvirt, cgroups and hugepages.

This 2-CPU node: housekeeping CPU 0; space_shared = partition p1 on CPU 1 (the pool falls back
to housekeeping, so shared guests do not fit and are preempted); time_shared = pool CPU 1.
"""

import json
import os
import signal
import subprocess
import sys
import uuid

import libvirt
import pytest

import testbed
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import cpumap_to_set
from conftest import ROOT, run_module

MODULE = "hpcvirt.regime.node_regime"
JOURNAL = "/var/lib/hpcvirt/journal/node_regime.json"
REGIME_FILE = "/var/lib/hpcvirt/regime.json"
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


def space_args(enclave):
    return {"regime": "space_shared", "housekeeping": "0", "overflow": "preempt",
            "partitions": [{"name": "p1", "cpus": "1", "hugepages": {"size": "2M", "count": 4}}],
            "guests": [{"name": enclave, "placement": "dedicated", "partition": "p1"}]}


TIME_ARGS = {"regime": "time_shared", "housekeeping": "0"}


@pytest.fixture
def node(restored_node):
    """Leave the node's layout, hugepages and regime record as they were (conftest)."""
    return restored_node


def pins(dom):
    return [set(cpumap_to_set(m)) for m in dom.vcpuPinInfo(LIVE)]


def assert_space_shared(enclave, web):
    assert enclave.isActive() and pins(enclave) == [{1}]
    assert not web.isActive() and web.hasManagedSaveImage(0)
    with open(REGIME_FILE) as handle:
        assert json.load(handle)["regime"] == "space_shared"
    assert os.path.isdir("/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition")
    assert not os.path.exists(JOURNAL)


def assert_time_shared(enclave, web):
    assert enclave.isActive() and web.isActive() and not web.hasManagedSaveImage(0)
    assert pins(enclave) == [{1}] and pins(web) == [{1}]
    with open(REGIME_FILE) as handle:
        assert json.load(handle)["regime"] == "time_shared"
    assert not os.path.exists("/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition")


def assert_beats_continued(*tails):
    for tail in tails:
        seqs = [beat["seq"] for _stamp, beat in tail.beats]
        assert tail.restarts() == 0, tail.name
        assert len(seqs) > 3 and seqs == sorted(seqs), tail.name


def test_round_trip_preempts_and_resumes_without_restarts(node, guest_factory):
    enclave, web = guest_factory(), guest_factory()
    with testbed.HeartbeatTail(enclave.name()) as beat_e, testbed.HeartbeatTail(web.name()) as beat_w:
        testbed.wait_for_beats(web.name(), 2)
        predicted = run_module(MODULE, space_args(enclave.name()), check=True)
        assert not predicted.get("failed"), predicted.get("msg")
        assert web.isActive() and not os.path.exists(JOURNAL)          # check mode touched nothing

        result = run_module(MODULE, space_args(enclave.name()))
        assert not result.get("failed"), result.get("msg")
        assert result["plan"] == predicted["plan"]
        assert result["plan"][0]["action"] == "preempt"                 # make room before re-carving
        fates = {g["name"]: g for g in result["guests"]}
        assert fates[web.name()]["fate"] == "preempted"
        assert fates[enclave.name()]["placement"] == {"mode": "dedicated", "partition": "p1", "cpus": "1"}
        assert result["interrupted_run"] is None
        assert_space_shared(enclave, web)
        info = run_module("hpcvirt.regime.node_info", {"include_cpus": False})
        assert info["regime"]["name"] == "space_shared" and info["regime"]["source"] == "recorded"

        assert run_module(MODULE, space_args(enclave.name()))["changed"] is False

        back = run_module(MODULE, TIME_ARGS)
        assert not back.get("failed"), back.get("msg")
        assert {g["name"]: g["fate"] for g in back["guests"]}[web.name()] == "resumed"
        assert_time_shared(enclave, web)
        testbed.wait_for_beats(web.name(), 3)
        assert run_module(MODULE, TIME_ARGS)["changed"] is False
    assert_beats_continued(beat_e, beat_w)


def kill_after(k, args, args_file):
    """Run node_regime in its own process and SIGKILL it after its k-th executed step."""
    with open(args_file, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tests", "integration", "kill_harness.py"),
                           "node_regime", str(k), args_file], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize("direction", ["to_space_shared", "to_time_shared"])
def test_killed_after_every_step_converges_on_the_next_run(node, guest_factory, direction):
    """SIGKILL the change after each step k = 1..N of its plan; every next run converges, no guest lost."""
    enclave, web = guest_factory(), guest_factory()
    space, time_ = space_args(enclave.name()), TIME_ARGS
    args, start, converged = ((space, time_, assert_space_shared) if direction == "to_space_shared"
                              else (time_, space, assert_time_shared))
    args_file = os.path.join(ROOT, ".build", "tmp", "regime-%s.json" % uuid.uuid4().hex[:8])
    os.makedirs(os.path.dirname(args_file), exist_ok=True)
    with testbed.HeartbeatTail(enclave.name()) as beat_e, testbed.HeartbeatTail(web.name()) as beat_w:
        testbed.wait_for_beats(web.name(), 2)
        assert not run_module(MODULE, start).get("failed")
        steps = len(run_module(MODULE, args, check=True)["plan"])
        assert steps >= 5
        for k in range(1, steps + 1):
            killed = kill_after(k, args, args_file)
            assert killed.returncode == -signal.SIGKILL, "k=%d: %s" % (k, killed.stdout + killed.stderr)
            with open(JOURNAL) as handle:
                journal = json.load(handle)
            assert journal["target"] == args["regime"] and journal["done"] == k and len(journal["steps"]) == steps

            again = run_module(MODULE, args)
            assert not again.get("failed"), "k=%d: %s" % (k, again.get("msg"))
            assert again["interrupted_run"]["done"] == k and again["changed"] is True
            converged(enclave, web)
            assert not os.path.exists(JOURNAL)
            assert run_module(MODULE, args)["changed"] is False, "k=%d" % k
            assert enclave.isActive() and (web.isActive() or web.hasManagedSaveImage(0)), "k=%d: a guest was lost" % k
            back = run_module(MODULE, start)                           # the start state for the next k
            assert not back.get("failed"), back.get("msg")
        testbed.wait_for_beats(web.name(), 3)
    os.unlink(args_file)
    assert_beats_continued(beat_e, beat_w)


def test_overflow_fail_refuses_before_anything_moves(node, guest_factory):
    enclave, web = guest_factory(), guest_factory()
    args = dict(space_args(enclave.name()), overflow="fail")
    result = run_module(MODULE, args)
    assert result["failed"] is True
    assert web.name() in result["msg"] and "overflow is fail" in result["msg"]
    assert pins(enclave) == [{0, 1}] and web.isActive()
    assert not os.path.exists("/sys/fs/cgroup/cpuset/machine/hpcvirt-p1.partition")
    assert not os.path.exists(JOURNAL)


@pytest.mark.parametrize("args, words", [
    (dict(TIME_ARGS, partitions=[{"name": "p1", "cpus": "1"}]), "a time_shared node has no partitions"),
    ({"regime": "space_shared", "housekeeping": "0"}, "needs at least one partition"),
    ({"regime": "space_shared", "housekeeping": "0", "partitions": [{"name": "p1", "cpus": "5"}]},
     "CPUs 5 are not online"),
    (dict(TIME_ARGS, guests=[{"name": "hpcvirt-it-ghost", "placement": "shared"}]), "no guest 'hpcvirt-it-ghost'"),
])
def test_bad_requests_change_nothing(node, args, words):
    before = open(REGIME_FILE).read() if os.path.exists(REGIME_FILE) else None
    result = run_module(MODULE, args)
    assert result["failed"] is True and words in result["msg"]
    assert (open(REGIME_FILE).read() if os.path.exists(REGIME_FILE) else None) == before
