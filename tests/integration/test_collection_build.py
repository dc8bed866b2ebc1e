"""The collection builds into a tarball that installs cleanly and whose modules document themselves."""

import glob
import os
import subprocess
import sys

from conftest import ROOT

BIN = os.path.dirname(sys.executable)


def run(*cmd, env=None):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_build_install_and_document(tmp_path):
    build = run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path))
    assert build.returncode == 0, build.stderr
    (tarball,) = glob.glob(str(tmp_path / "hpcvirt-regime-*.tar.gz"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(tmp_path / "installed")
    install = run(os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-p", str(tmp_path / "installed"),
                  tarball, env=env)
    assert install.returncode == 0, install.stderr
    installed = tmp_path / "installed" / "ansible_collections" / "hpcvirt" / "regime"
    assert (installed / "plugins" / "modules" / "node_info.py").is_file()
    assert not (installed / ".venv").exists() and not (installed / ".build").exists()

    doc = run(os.path.join(BIN, "ansible-doc"), "hpcvirt.regime.node_info", env=env)
    assert doc.returncode == 0, doc.stderr
    assert "hpcvirt.regime.node_info" in doc.stdout and "include_cpus" in doc.stdout
