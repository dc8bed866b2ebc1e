"""Each AWX job template's playbook run as AWX runs it: through ansible-runner, with the survey's
extra vars (its defaults, and a set of answers), against this node. The result, the runner's
artifacts and the set_stats data (what AWX shows as the job's artifacts and passes to a
workflow's next job) are checked, and so is the node. An answer outside what the playbook accepts
is refused before anything changes, naming the variable."""

import json
import os
import sys
import uuid

import ansible_runner
import libvirt
import pytest
import yaml

import testbed
from conftest import REGIME_FILE, ROOT, run_playbook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for libvirt and the node's cgroups")

LOCAL = os.path.join(ROOT, "inventories", "local", "hosts.yml")
with open(os.path.join(ROOT, "awx", "vars", "job_templates.yml")) as _handle:
    TEMPLATES = {t["name"]: t for t in yaml.safe_load(_handle)["hpcvirt_awx_job_templates"]}
CHECK_ACTIONS = {"ansible.builtin.include_tasks", "ansible.builtin.include_vars", "ansible.builtin.assert"}
GUEST = "hpcvirt-it-awx-1"


def survey_extra_vars(template, answers):
    """The extra vars AWX gives a job: the template's extra_vars, then each question's answer,
    or its default when it has one (an optional question left blank passes nothing)."""
    extra = dict(template.get("extra_vars") or {})
    for question in template["survey_spec"]["spec"]:
        name = question["variable"]
        if name in answers:
            extra[name] = answers[name]
        elif question.get("default", "") != "":
            extra[name] = question["default"]
    return extra


class Job:
    def __init__(self, runner, data_dir):
        self.status, self.rc = runner.status, runner.rc
        self.events = list(runner.events)
        self.stdout = runner.stdout.read()
        self.artifact_dir = os.path.join(data_dir, "artifacts", runner.config.ident)
        stats = [e for e in self.events if e.get("event") == "playbook_on_stats"]
        self.artifacts = stats[-1]["event_data"].get("artifact_data", {}) if stats else {}

    def task_events(self):
        return [e["event_data"] for e in self.events
                if e.get("event", "").startswith("runner_on_") and "task_action" in e.get("event_data", {})]

    def failed(self):
        """The failed task events (runner_on_failed; ansible-core 2.19 leaves ``failed`` out of ``res``)."""
        return [e["event_data"] for e in self.events if e.get("event") == "runner_on_failed"]

    def changed(self):
        return [e["task"] for e in self.task_events() if (e.get("res") or {}).get("changed")]

    def __repr__(self):
        return "job %s rc=%s\n%s" % (self.status, self.rc, self.stdout[-6000:])


@pytest.fixture
def run_job(tmp_path):
    env = {
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".build", "collections"),
        "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
    }

    def run(name, answers=None, inventory=LOCAL, extra=None):
        template = TEMPLATES[name]
        extravars = survey_extra_vars(template, answers or {})
        extravars.update(extra or {})
        data_dir = tmp_path / ("job-" + uuid.uuid4().hex[:8])
        data_dir.mkdir()
        runner = ansible_runner.run(private_data_dir=str(data_dir), project_dir=ROOT, playbook=template["playbook"],
                                    inventory=inventory, extravars=extravars, envvars=env, quiet=True, timeout=900)
        job = Job(runner, str(data_dir))
        # What AWX keeps of every job: the events, the exit code, the command, stdout.
        assert os.listdir(os.path.join(job.artifact_dir, "job_events")), job
        with open(os.path.join(job.artifact_dir, "rc")) as handle:
            assert int(handle.read()) == job.rc
        with open(os.path.join(job.artifact_dir, "command")) as handle:
            command = json.load(handle)["command"]
        assert os.path.join(ROOT, template["playbook"]) in command or template["playbook"] in command
        return job

    return run


def regime_record():
    if not os.path.exists(REGIME_FILE):
        return None
    with open(REGIME_FILE) as handle:
        return handle.read()


def test_status_job_publishes_each_nodes_state(run_job):
    for answers in ({}, {"status_hosts": "localhost"}):
        job = run_job("hpcvirt status", answers)
        assert job.status == "successful", job
        state = job.artifacts["hpcvirt_status"]["localhost"]
        assert state["regime"] in ("space_shared", "time_shared", "mixed")
        assert isinstance(state["guests"], dict) and job.changed() == []


def test_reconfigure_jobs_with_defaults_and_answers(run_job, restored_node):
    job = run_job("hpcvirt reconfigure")
    assert job.status == "successful", job
    result = job.artifacts["hpcvirt_reconfigure"]["localhost"]
    assert result["ok"] is True and result["regime"] == "time_shared"

    answers = {"regime": "space_shared", "reconfigure_hosts": "localhost", "reconfigure_serial": 1,
               "reconfigure_max_fail_percentage": 0, "reconfigure_evacuate": "no", "regime_scheduler": "none"}
    # The local inventory places the demo guest, absent here: the node fails, names why, and the
    # failure is published too.
    job = run_job("hpcvirt reconfigure", answers)
    assert job.status == "failed", job
    result = job.artifacts["hpcvirt_reconfigure"]["localhost"]
    assert result["ok"] is False and "no guest 'hpcvirt-vse-demo-1' on this node" in result["message"]

    # Without the group's placements (as a template's extra_vars could say) it moves.
    job = run_job("hpcvirt reconfigure", answers, extra={"regime_placements": {}})
    assert job.status == "successful", job
    result = job.artifacts["hpcvirt_reconfigure"]["localhost"]
    assert result["ok"] is True and result["regime"] == "space_shared" and result["changed"] is True
    assert "read" in result["timings_ms"]
    assert json.loads(regime_record())["regime"] == "space_shared"

    # The sliceable template (what the workflow runs) takes the node back; its template pins
    # reconfigure_evacuate to false.
    job = run_job("hpcvirt reconfigure (sliceable)", dict(answers, regime="time_shared"), extra={"regime_placements": {}})
    assert job.status == "successful", job
    assert job.artifacts["hpcvirt_reconfigure"]["localhost"]["regime"] == "time_shared"
    assert json.loads(regime_record())["regime"] == "time_shared"


EVACUATE_INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: /usr/bin/python3
  children:
    hpc_nodes:
      hosts:
        localhost:
    evacuate:
      hosts:
        localhost:
    time_shared:
      hosts: {}
"""


def test_evacuate_and_restore_jobs_preempt_and_resume_a_guest(run_job, guest_factory, conn, tmp_path, restored_node):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(EVACUATE_INVENTORY)
    # What a site would put in the template's extra_vars to keep other guests out of it.
    only_ours = {"evacuate_guest_pattern": "^hpcvirt-it-awx-"}
    guest_factory(GUEST)
    boot = testbed.read_beats(GUEST)[-1]["boot"]

    # No destination and no preemption allowed: refused before anything moves.
    job = run_job("hpcvirt evacuate", {"evacuate_preempt": "no", "evacuate_strategy": "pack", "evacuate_concurrency": 1},
                  inventory=str(inventory), extra=only_ours)
    assert job.status == "failed", job
    failed = job.failed()
    assert [e["task"] for e in failed] == ["Refuse before anything moves when a guest fits nowhere"], job
    assert GUEST in failed[0]["res"]["msg"] and "nothing was moved" in failed[0]["res"]["msg"]
    assert job.changed() == [] and conn.lookupByName(GUEST).isActive()

    # The survey's defaults: the group evacuate, preempting what fits nowhere.
    job = run_job("hpcvirt evacuate", inventory=str(inventory), extra=only_ours)
    assert job.status == "successful", job
    report = job.artifacts["hpcvirt_evacuate"]["localhost"]
    assert report["preempted"] == [GUEST] and report["migrated"] == {}
    dom = conn.lookupByName(GUEST)
    assert not dom.isActive() and dom.hasManagedSaveImage(0)

    job = run_job("hpcvirt restore", {"evacuate_hosts": "localhost", "evacuate_concurrency": 1},
                  inventory=str(inventory), extra=only_ours)
    assert job.status == "successful", job
    assert job.artifacts["hpcvirt_restore"]["localhost"]["resumed"] == [GUEST]
    assert conn.lookupByName(GUEST).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    before = len(testbed.read_beats(GUEST))
    testbed.wait_for_beats(GUEST, before + 2, 60)
    assert testbed.read_beats(GUEST)[-1]["boot"] == boot   # resumed from its saved memory, not rebooted


def test_provision_job_builds_and_removes_the_inventorys_guests(run_job, conn):
    names = ["hpcvirt-vse-demo-1", "hpcvirt-vse-demo-2"]
    try:
        job = run_job("hpcvirt provision")
        assert job.status == "successful", job
        instances = job.artifacts["hpcvirt_provision"]["localhost"]["instances"]
        assert instances == {name: "running" for name in names}
        assert all(conn.lookupByName(name).isActive() for name in names)

        job = run_job("hpcvirt provision", {"provision_hosts": "hpc_nodes", "vse_state": "absent", "vse_force": "yes"})
        assert job.status == "successful", job
        assert job.artifacts["hpcvirt_provision"]["localhost"]["instances"] == {name: "absent" for name in names}
        assert sorted(d.name() for d in conn.listAllDomains(0) if d.name() in names) == []
    finally:
        run_playbook("playbooks/provision.yml", "-e", "vse_state=absent", "-e", "vse_force=true")


@pytest.mark.parametrize("name,answers,message", [
    ("hpcvirt reconfigure", {"regime": "space-shared"},
     "regime: 'space-shared' is not one of space_shared, time_shared, mixed"),
    ("hpcvirt reconfigure", {"reconfigure_evacuate": "perhaps", "reconfigure_max_fail_percentage": 150},
     "reconfigure_evacuate: 'perhaps' is not yes or no; reconfigure_max_fail_percentage: 150 is not a whole number from 0 to 100"),
    ("hpcvirt reconfigure (sliceable)", {"reconfigure_serial": -1},
     "reconfigure_serial: -1 must be between 0 and 10000 hosts"),
    ("hpcvirt reconfigure (sliceable)", {"regime_scheduler": "pbs"}, "regime_scheduler: 'pbs' is not one of none, slurm"),
    ("hpcvirt reconfigure", {"regime": "space_shared", "reconfigure_hosts": "rack_z"},
     "reconfigure_hosts: 'rack_z' matches no host of this inventory"),
    ("hpcvirt evacuate", {"evacuate_hosts": "localhost", "evacuate_strategy": "random"},
     "evacuate_strategy: 'random' is not one of spread, pack"),
    ("hpcvirt restore", {"evacuate_hosts": "localhost", "evacuate_concurrency": 0},
     "evacuate_concurrency: 0 is not a whole number from 1 to 64"),
    ("hpcvirt provision", {"vse_state": "deleted"}, "vse_state: 'deleted' is not one of present, running, stopped, absent"),
    ("hpcvirt provision", {"provision_hosts": "all;reboot"}, "provision_hosts: 'all;reboot' is not a host pattern"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("hpcvirt") else None)
def test_answers_outside_what_the_playbook_accepts_are_refused_before_any_change(run_job, name, answers, message):
    before = regime_record()
    job = run_job(name, answers)
    assert job.status == "failed", job
    assert message in " ".join(job.stdout.split()) or message in json.dumps(
        [e.get("res", {}).get("msg", "") for e in job.task_events()]), job
    assert "nothing was changed" in json.dumps([e.get("res", {}).get("msg", "") for e in job.task_events()])
    # Only the answer checks ran: no module touched the node.
    assert {e["task_action"] for e in job.task_events()} <= CHECK_ACTIONS, job
    assert job.changed() == [] and regime_record() == before
