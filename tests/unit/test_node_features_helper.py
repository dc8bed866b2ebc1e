"""The Slurm node_features helper program: settings, reading the regime, and switching it."""

import importlib.util
import json
import os
import sys

import pytest

HELPER = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "slurm", "files", "hpcvirt_node_features.py")


@pytest.fixture(scope="module")
def helper():
    spec = importlib.util.spec_from_file_location("hpcvirt_node_features", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_for(helper, tmp_path, **values):
    conf = tmp_path / "node-features.conf"
    lines = ["[node-features]"] + ["%s = %s" % item for item in values.items()]
    conf.write_text("\n".join(lines) + "\n")
    return helper.load_settings({"HPCVIRT_NODE_FEATURES_CONF": str(conf)})


def test_the_default_switch_leaves_slurm_to_slurm(helper):
    # Slurm holds the node for the job that asked: the playbook must not drain it too.
    assert "-e regime_scheduler=none" in helper.DEFAULT_SET_COMMAND
    assert "--limit {node}" in helper.DEFAULT_SET_COMMAND


def test_the_collection_comes_first_on_the_collections_path(helper, tmp_path):
    settings = settings_for(helper, tmp_path, collections_path="/opt/hpcvirt")
    env = helper.command_environment(settings, {"ANSIBLE_COLLECTIONS_PATH": "/a:/opt/hpcvirt:/b", "PATH": "/bin"})
    assert env["ANSIBLE_COLLECTIONS_PATH"] == "/opt/hpcvirt:/a:/b" and env["PATH"] == "/bin"
    assert helper.command_environment(settings, {})["ANSIBLE_COLLECTIONS_PATH"] == "/opt/hpcvirt"


def test_recorded_regime_is_printed(helper, tmp_path, capsys):
    record = tmp_path / "regime.json"
    record.write_text(json.dumps({"regime": "space_shared"}))
    settings = settings_for(helper, tmp_path, regime_file=str(record), node_name="cn7")
    assert helper.get_state(settings) == 0
    assert capsys.readouterr().out == "space_shared\n"
    record.write_text(json.dumps({"regime": "mixed"}))  # mixed advertises neither feature
    assert helper.get_state(settings) == 0
    assert capsys.readouterr().out == ""


def test_switch_runs_the_command_and_checks_the_result(helper, tmp_path):
    record = tmp_path / "regime.json"
    record.write_text(json.dumps({"regime": "time_shared"}))
    writer = "%s -c \"import json,sys; json.dump({'regime': sys.argv[2]}, open(sys.argv[1], 'w'))\" %s {feature}" % (
        sys.executable, record)
    settings = settings_for(helper, tmp_path, regime_file=str(record), set_command=writer)
    assert helper.set_state(settings, "space_shared") == 0
    assert json.loads(record.read_text())["regime"] == "space_shared"
    assert helper.set_state(settings, "space_shared") == 0      # already there: nothing runs
    liar = settings_for(helper, tmp_path, regime_file=str(record), set_command="true")
    assert helper.set_state(liar, "time_shared") == 1           # exit 0 but the regime did not move
    failing = settings_for(helper, tmp_path, regime_file=str(record), set_command="false")
    assert helper.set_state(failing, "time_shared") == 1
    assert helper.set_state(settings, "gpu") == 2
