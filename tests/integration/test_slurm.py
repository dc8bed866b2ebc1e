"""slurm_node, the slurm role's hooks and the node_features helper against a REAL Slurm.

The session fixture starts tools/slurm/testbed.sh (munged, slurmctld, slurmd for node1 and node2
on 127.0.0.1; Debian's packages are installed when missing) in a directory and on ports of its own,
and stops it at the end.
"""

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from conftest import ROOT, run_module, run_playbook

TESTBED = os.path.join(ROOT, "tools", "slurm", "testbed.sh")
HELPER = os.path.join(ROOT, "roles", "slurm", "files", "hpcvirt-node-features")
DIR = "/var/lib/hpcvirt/slurm-testbed-it"
PORT = "16917"
CONF = os.path.join(DIR, "etc", "slurm.conf")
MODULE = "hpcvirt.regime.slurm_node"


def run_testbed(*args):
    env = dict(os.environ, HPCVIRT_SLURM_DIR=DIR, HPCVIRT_SLURM_PORT=PORT, HPCVIRT_SLURM_NODES="2")
    return subprocess.run([TESTBED] + list(args), env=env, capture_output=True, text=True, timeout=900, check=False)


def slurm(*argv, check=True):
    proc = subprocess.run(list(argv), env=dict(os.environ, SLURM_CONF=CONF), capture_output=True, text=True,
                          timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed: %s %s" % (argv, proc.stdout, proc.stderr))
    return proc.stdout


def node_line(name):
    return slurm("scontrol", "show", "node", "-o", name)


def record_regime(node, regime):
    path = os.path.join(DIR, "nodes", node, "regime.json")
    with open(path, "w") as handle:
        json.dump({"regime": regime, "changed_at": "test"}, handle)


def switch_regime(node, regime):
    """What a regime change leaves behind: the record, and a slurmd restarted to re-read it (slurmd
    runs the helper when it starts and reports that result at every registration)."""
    record_regime(node, regime)
    proc = run_testbed("reboot-node", node)
    assert proc.returncode == 0, proc.stderr
    wait_until(lambda: "ActiveFeatures=%s " % regime in node_line(node), timeout=30, what="%s on %s" % (regime, node))


def wait_until(predicate, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("timed out waiting for %s" % what)


@pytest.fixture(scope="session")
def slurm_testbed():
    run_testbed("stop")
    shutil.rmtree(DIR, ignore_errors=True)
    proc = run_testbed("start")
    assert proc.returncode == 0, proc.stderr
    assert "SLURM_CONF=%s" % CONF in proc.stdout
    yield CONF
    run_testbed("stop")


@pytest.fixture
def nodes(slurm_testbed):
    """Both nodes idle, time_shared active, not drained, no job: the state each test starts from."""
    slurm("scancel", "--full", "-u", "root", check=False)
    for node in ("node1", "node2"):
        os.makedirs(os.path.join(DIR, "nodes", node), exist_ok=True)
        record_regime(node, "time_shared")
        fail_switch = os.path.join(DIR, "nodes", node, "fail-switch")
        if os.path.exists(fail_switch):
            os.unlink(fail_switch)
        slurm("scontrol", "update", "nodename=%s" % node, "availablefeatures=space_shared,time_shared",
              "activefeatures=time_shared")
        slurm("scontrol", "update", "nodename=%s" % node, "state=resume", check=False)
    for node in ("node1", "node2"):
        wait_until(lambda n=node: "State=IDLE " in node_line(n), what="%s idle" % node)
    return slurm_testbed


def run(args, **kwargs):
    args = dict(args, slurm_conf=CONF)
    return run_module(MODULE, args, **kwargs)


def test_drain_with_reason_then_idempotent(nodes):
    reason = "hpcvirt: switching to space_shared (test, key=value)"
    first = run({"name": "node1", "state": "drained", "reason": reason})
    assert first["changed"] and not first.get("failed"), first
    assert first["node"]["summary"] == "drained" and first["node"]["reason"] == reason
    assert "State=IDLE+DRAIN" in node_line("node1")
    assert "Reason=%s [" % reason in node_line("node1")
    assert first["timings"]["drain"] > 0
    second = run({"name": "node1", "state": "drained", "reason": reason})
    assert not second["changed"] and second["plan"] == []


def test_check_mode_predicts_and_changes_nothing(nodes):
    args = {"name": "node2", "state": "drained", "reason": "hpcvirt: check", "active_features": ["space_shared"],
            "managed_features": ["space_shared", "time_shared"]}
    predicted = run(args, check=True, diff=True)
    assert predicted["changed"]
    assert "State=IDLE " in node_line("node2") and "ActiveFeatures=time_shared " in node_line("node2")
    assert predicted["diff"]["after"] == {"drain node2": "drain", "features node2": {"active_features": "space_shared"}}
    assert predicted["diff"]["before"]["features node2"] == {"active_features": "time_shared"}
    real = run(args)
    assert real["plan"] == predicted["plan"]
    assert "State=IDLE+DRAIN" in node_line("node2") and "ActiveFeatures=space_shared " in node_line("node2")
    assert not run(args, check=True)["changed"]


def test_resume_and_features(nodes):
    run({"name": "node1", "state": "drained", "reason": "hpcvirt: switching to space_shared"})
    switch_regime("node1", "space_shared")
    result = run({"name": "node1", "state": "resumed", "active_features": ["space_shared"]})
    assert result["changed"], result
    assert [step["action"] for step in result["plan"]] == ["resume"]  # slurmd already reports the regime
    # Resuming makes slurmd re-register, and the helper then reports the recorded regime.
    wait_until(lambda: "ActiveFeatures=space_shared " in node_line("node1"), timeout=20, what="feature")
    assert "+DRAIN" not in node_line("node1")
    assert not run({"name": "node1", "state": "resumed", "active_features": ["space_shared"]})["changed"]
    bad = run({"name": "node1", "active_features": ["gpu"]})
    assert bad["failed"] and "active_features: gpu not among the available features" in bad["msg"]


def test_available_features_update(nodes):
    result = run({"name": "node2", "available_features": ["space_shared", "time_shared", "ib"]})
    assert result["changed"] and "AvailableFeatures=space_shared,time_shared,ib " in node_line("node2")
    assert not run({"name": "node2", "available_features": ["ib", "time_shared", "space_shared"]})["changed"]


def test_errors_are_clear(nodes, tmp_path):
    unknown = run({"name": "node9"})
    assert unknown["failed"] and unknown["error"] == "unknown_node" and "node9" in unknown["msg"]
    missing = run_module(MODULE, {"name": "node1", "slurm_conf": CONF, "scontrol": "/nonexistent/scontrol"})
    assert missing["failed"] and missing["msg"].startswith("scontrol: /nonexistent/scontrol")
    # A controller nobody listens on: a copy of the configuration pointing at another port.
    wrong = tmp_path / "slurm.conf"
    with open(CONF) as handle:
        wrong.write_text(handle.read().replace("SlurmctldPort=%s" % PORT, "SlurmctldPort=16990"))
    shutil.copy(os.path.join(DIR, "etc", "helpers.conf"), str(tmp_path / "helpers.conf"))
    unreachable = run_module(MODULE, {"name": "node1", "slurm_conf": str(wrong)})
    assert unreachable["failed"] and unreachable["error"] == "controller_unreachable", unreachable
    no_conf = run_module(MODULE, {"name": "node1", "slurm_conf": str(tmp_path / "absent.conf")})
    assert no_conf["failed"] and no_conf["msg"].startswith("slurm_conf:")
    no_reason = run_module(MODULE, {"name": "node1", "slurm_conf": CONF, "state": "drained"})
    assert no_reason["failed"] and "reason" in no_reason["msg"]
    assert "+DRAIN" not in node_line("node1")


def test_drain_waits_for_running_jobs_and_times_out_clearly(nodes):
    job = slurm("sbatch", "--parsable", "-w", "node2", "-o", "/dev/null", "--wrap", "sleep 60").strip()
    wait_until(lambda: "CPUAlloc=1 " in node_line("node2"), what="job on node2")
    timed_out = run({"name": "node2", "state": "drained", "reason": "hpcvirt: wait test", "wait": True,
                     "timeout": 1})
    assert timed_out["failed"] and "still runs jobs after 1 s" in timed_out["msg"], timed_out
    assert "+DRAIN" in node_line("node2")
    threading.Timer(5, slurm, args=("scancel", job)).start()  # the job ends while the module waits
    waited = run({"name": "node2", "state": "drained", "reason": "hpcvirt: wait test", "wait": True,
                  "timeout": 60})
    assert not waited["changed"] and waited["waited"] and waited["node"]["summary"] == "drained", waited
    assert waited["timings"]["wait"] > 0


def test_helper_reports_the_recorded_regime_and_switches(nodes, tmp_path):
    env = dict(os.environ, HPCVIRT_NODE_FEATURES_CONF=os.path.join(DIR, "nodes", "node1", "node-features.conf"))
    record_regime("node1", "space_shared")
    read = subprocess.run([HELPER], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert read.returncode == 0 and read.stdout == "space_shared\n"
    record_regime("node1", "mixed")
    assert subprocess.run([HELPER], env=env, capture_output=True, text=True, check=False).stdout == ""
    switched = subprocess.run([HELPER, "time_shared"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert switched.returncode == 0, switched.stderr
    with open(os.path.join(DIR, "nodes", "node1", "regime.json")) as handle:
        assert json.load(handle)["regime"] == "time_shared"
    open(os.path.join(DIR, "nodes", "node1", "fail-switch"), "w").close()
    failed = subprocess.run([HELPER, "space_shared"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 1 and "switch to space_shared failed" in failed.stderr
    assert subprocess.run([HELPER, "gpu"], env=env, capture_output=True, text=True, check=False).returncode == 2
    # Without a record, the regime is inferred from the machine's layout (the collection's code).
    os.unlink(os.path.join(DIR, "nodes", "node1", "regime.json"))
    inferred = subprocess.run([HELPER], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert inferred.returncode == 0 and "(inferred)" in inferred.stderr


def test_jobs_run_only_where_their_feature_is_active(nodes):
    # node2 is space_shared; node1 time_shared. A time_shared job goes to node1 only.
    record_regime("node2", "space_shared")
    slurm("scontrol", "update", "nodename=node2", "activefeatures=space_shared")
    out = slurm("sbatch", "--parsable", "-C", "time_shared", "-o", "/dev/null", "--wrap", "sleep 1")
    job = out.strip().split(";")[0]
    wait_until(lambda: "NodeList=node1" in slurm("scontrol", "show", "job", job), what="job %s placed" % job)
    # With node2 drained, a space_shared job needs node1 switched: Slurm runs the helper with the
    # feature (our switch), "reboots" node1 and starts the job only once node1 reports space_shared.
    run({"name": "node2", "state": "drained", "reason": "hpcvirt: keep off"})
    out = slurm("sbatch", "--parsable", "-C", "space_shared", "-o", "/dev/null", "--wrap", "true")
    job = out.strip().split(";")[0]

    def finished():
        text = slurm("scontrol", "show", "job", job)
        return "JobState=COMPLETED" in text or "JobState=FAILED" in text
    wait_until(finished, timeout=150, what="space_shared job %s" % job)
    text = slurm("scontrol", "show", "job", job)
    assert "JobState=COMPLETED" in text and "NodeList=node1" in text, text
    assert "ActiveFeatures=space_shared " in node_line("node1")
    with open(os.path.join(DIR, "nodes", "node1", "regime.json")) as handle:
        assert json.load(handle)["regime"] == "space_shared"


ROLE_PLAY = """
- name: Slurm hooks of a regime change
  hosts: localhost
  gather_facts: false
  connection: local
  vars:
    ansible_python_interpreter: /usr/bin/python3
    slurm_node_name: node1
    slurm_conf: {conf}
    slurm_regime: space_shared
    slurm_wait_for_jobs: true
    slurm_drain_timeout: 60
    slurm_slurmd_restart_command: [{restart}]
  tasks:
    - name: Drain
      ansible.builtin.include_role:
        name: hpcvirt.regime.slurm
        tasks_from: drain.yml
    - name: Show the drained node
      ansible.builtin.include_role:
        name: hpcvirt.regime.slurm
    - name: Print it
      ansible.builtin.debug:
        msg: "DRAINED={{{{ slurm_node_state.summary }}}}|{{{{ slurm_node_state.reason }}}}"
    - name: Fail or resume
      ansible.builtin.include_role:
        name: hpcvirt.regime.slurm
        tasks_from: "{{{{ hook }}}}.yml"
      vars:
        slurm_failure: "partition: no CPUs left"
"""


RESTART = os.path.join(DIR, "nodes", "node1", "restart-slurmd")


def role_play(hook):
    return run_playbook(ROLE_PLAY.format(conf=CONF, restart=RESTART), "-e", "hook=%s" % hook, inventory="localhost,")


def test_role_hooks_drain_resume_fail(nodes):
    switch_regime("node1", "space_shared")
    proc = role_play("resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRAINED=drained|hpcvirt: switching to space_shared" in proc.stdout
    wait_until(lambda: "ActiveFeatures=space_shared " in node_line("node1"), timeout=20, what="feature")
    assert "+DRAIN" not in node_line("node1")
    proc = role_play("fail")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = node_line("node1")
    assert "+DRAIN" in line and "Reason=hpcvirt: switch to space_shared failed: partition: no CPUs left [" in line


RESUME_PLAY = """
- name: Resume hook alone
  hosts: localhost
  gather_facts: false
  connection: local
  vars:
    ansible_python_interpreter: /usr/bin/python3
    slurm_node_name: node1
    slurm_conf: {conf}
    slurm_regime: space_shared
    slurm_slurmd_restart_command: [{restart}]
  tasks:
    - name: Resume hook
      ansible.builtin.include_role:
        name: hpcvirt.regime.slurm
        tasks_from: resume.yml
"""


def test_role_resume_is_idempotent_and_leaves_foreign_drains(nodes):
    record_regime("node1", "space_shared")
    first = role_play("resume")
    assert first.returncode == 0, first.stdout + first.stderr
    # slurmd was restarted by resume.yml (it reads the regime through the helper only at start).
    assert "Restart slurmd so that it reads the new regime" in first.stdout
    line = node_line("node1")
    assert "ActiveFeatures=space_shared " in line and "+DRAIN" not in line
    again = run_playbook(RESUME_PLAY.format(conf=CONF, restart=RESTART), inventory="localhost,")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed=0" in again.stdout
    slurm("scontrol", "update", "nodename=node1", "state=drain", "reason=bad DIMM")
    proc = run_playbook(RESUME_PLAY.format(conf=CONF, restart=RESTART), inventory="localhost,")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stays drained" in proc.stdout
    assert "Reason=bad DIMM [" in node_line("node1") and "+DRAIN" in node_line("node1")


def test_role_keeps_a_drain_someone_else_set(nodes):
    slurm("scontrol", "update", "nodename=node1", "state=drain", "reason=bad DIMM")
    proc = role_play("fail")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DRAINED=drained|bad DIMM" in proc.stdout      # drain.yml kept the operator's reason
    wanted = "Reason=bad DIMM; hpcvirt: switch to space_shared failed: partition: no CPUs left ["
    assert wanted in node_line("node1")
    again = role_play("fail")                              # a second failure does not repeat itself
    assert again.returncode == 0 and wanted in node_line("node1")
    resumed = role_play("resume")                          # and nothing hpcvirt does resumes it
    assert resumed.returncode == 0 and "stays drained" in resumed.stdout
    assert "+DRAIN" in node_line("node1")
