"""Integration-test helpers: a real libvirtd, tiny real guests, real ansible-playbook runs."""

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import testbed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE_PYTHON = "/usr/bin/python3"   # modules run with the node's Python, as on a real node


def ansible_env():
    env = dict(os.environ)
    # The venv's ansible-playbook, also when pytest is run without activating the venv.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(ROOT, ".build", "collections"))
    env.setdefault("ANSIBLE_CONFIG", os.path.join(ROOT, "ansible.cfg"))
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    return env


def run_playbook(playbook, *args, inventory=None, extra_vars=None, check=False):
    """Run ``ansible-playbook`` (a path below the repo, or YAML text) and return the process."""
    tmpdir = os.path.join(ROOT, ".build", "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    if "\n" in playbook:
        path = os.path.join(tmpdir, "play-%s.yml" % uuid.uuid4().hex[:8])
        with open(path, "w") as handle:
            handle.write(textwrap.dedent(playbook))
    else:
        path = os.path.join(ROOT, playbook)
    cmd = ["ansible-playbook", path, "-i", inventory or os.path.join(ROOT, "inventories", "local", "hosts.yml")]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    cmd += list(args)
    return subprocess.run(cmd, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=900, check=False)


def run_module(module, args=None, check=False, diff=False, interpreter=NODE_PYTHON):
    """Run one module on the local node through ansible-playbook; return its result dict.

    A failed module is returned (``failed: true`` and ``msg``), not raised, so tests assert on it.
    """
    tmpdir = os.path.join(ROOT, ".build", "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    out = os.path.join(tmpdir, "result-%s.json" % uuid.uuid4().hex[:8])
    play = [{
        "hosts": "localhost", "gather_facts": False, "connection": "local",
        "vars": {"ansible_python_interpreter": interpreter},
        "tasks": [
            {"name": "run", module: args or {}, "register": "result", "ignore_errors": True,
             "check_mode": check, "diff": diff},
            {"name": "save", "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": out},
             "check_mode": False},
        ],
    }]
    path = os.path.join(tmpdir, "module-%s.yml" % uuid.uuid4().hex[:8])
    with open(path, "w") as handle:
        json.dump(play, handle)
    proc = subprocess.run(["ansible-playbook", path, "-i", "localhost,"], cwd=ROOT, env=ansible_env(),
                          capture_output=True, text=True, timeout=900, check=False)
    if not os.path.exists(out):
        raise AssertionError("ansible-playbook did not run the module:\n%s\n%s" % (proc.stdout, proc.stderr))
    with open(out) as handle:
        result = json.load(handle)
    os.unlink(out)
    os.unlink(path)
    return result


@pytest.fixture(scope="session")
def conn():
    connection = testbed.connect()
    yield connection
    connection.close()


@pytest.fixture
def guest_factory(conn):
    """Boot tiny guests for one test; every guest it made is removed afterwards."""
    made = []

    def boot(name=None, **kwargs):
        name = name or "hpcvirt-it-%s" % uuid.uuid4().hex[:6]
        made.append(name)
        return testbed.boot(conn, name, **kwargs)

    yield boot
    for name in made:
        testbed.remove(conn, name)


REGIME_FILE = "/var/lib/hpcvirt/regime.json"
REGIME_JOURNAL = "/var/lib/hpcvirt/journal/node_regime.json"


@pytest.fixture
def restored_node():
    """After the test: the node time_shared and uncarved, its regime record as it was, no journal."""
    saved = open(REGIME_FILE).read() if os.path.exists(REGIME_FILE) else None
    yield
    run_module("hpcvirt.regime.node_regime", {"regime": "time_shared", "housekeeping": "0"})
    assert not run_module("hpcvirt.regime.partition", {"state": "absent"}).get("failed")
    if saved is None:
        if os.path.exists(REGIME_FILE):
            os.unlink(REGIME_FILE)
    else:
        with open(REGIME_FILE, "w") as handle:
            handle.write(saved)
    if os.path.exists(REGIME_JOURNAL):
        os.unlink(REGIME_JOURNAL)
