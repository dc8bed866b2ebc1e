"""The execution environment definition (awx/execution-environment.yml, ansible-builder 3) and
the collection's own EE dependencies (meta/execution-environment.yml): ansible-builder introspect
lists them, ansible-builder create writes a build context that would install them. Building the
image needs a container engine and the base image's registry, which this machine lacks."""

import os
import subprocess
import sys

import yaml

from conftest import ROOT

BIN = os.path.dirname(sys.executable)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def galaxy_version():
    with open(os.path.join(ROOT, "galaxy.yml")) as handle:
        return yaml.safe_load(handle)["version"]


def requirement_lines(path):
    with open(os.path.join(ROOT, path)) as handle:
        return [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]


def test_introspect_lists_the_collections_python_and_system_dependencies(tmp_path):
    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    proc = run(os.path.join(BIN, "ansible-builder"), "introspect", COLLECTIONS,
               "--write-pip", str(pip_out), "--write-bindep", str(bindep_out))
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    ours = [line.split("  # from collection")[0] for line in data["python"] if "hpcvirt.regime" in line]
    assert ours == requirement_lines("meta/requirements.txt")
    system = [line.split("  # from collection")[0] for line in data["system"] if "hpcvirt.regime" in line]
    assert system == requirement_lines("meta/bindep.txt")
    assert "libvirt-devel [compile platform:rpm]" in system
    written = pip_out.read_text()
    assert "libvirt-python>=9.0.0" in written and "lxml" in written
    assert "libvirt-dev" in bindep_out.read_text()


def test_create_writes_a_build_context_with_the_collection_and_pinned_engines(tmp_path):
    version = galaxy_version()
    tarballs = os.path.join(ROOT, "awx", "collections")
    build = run(os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", tarballs)
    assert build.returncode == 0, build.stderr
    tarball = "hpcvirt-regime-%s.tar.gz" % version

    context = tmp_path / "context"
    proc = run(os.path.join(BIN, "ansible-builder"), "create", "-f", "awx/execution-environment.yml",
               "-c", str(context), "--output-filename", "Containerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / "Containerfile").read_text()
    assert (context / "_build" / "collections" / tarball).is_file()
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    names = [c["name"] for c in requirements["collections"]]
    assert "/build/collections/" + tarball in names and "awx.awx" in names

    # The engines are the versions requirements.txt pins for the controller.
    pins = dict(line.split("==") for line in requirement_lines("requirements.txt") if "==" in line)
    assert 'ANSIBLE_INSTALL_REFS="ansible-core==%s ansible-runner==%s"' % (pins["ansible-core"], pins["ansible-runner"]) \
        in containerfile
    # The build stage introspects the installed collections (ours included) for pip and bindep.
    assert "introspect.py introspect" in containerfile and "COPY _build /build" in containerfile
    assert "python3.11-devel [compile platform:rpm]" in (context / "_build" / "bindep.txt").read_text()
