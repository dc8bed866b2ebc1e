"""playbooks/provision.yml on the local inventory: two guests from one master image, three layers."""

import os

import libvirt
import pytest

from conftest import run_playbook
from test_vse import console, wait_beat

GUESTS = ["hpcvirt-vse-demo-1", "hpcvirt-vse-demo-2"]


@pytest.fixture
def provisioned(conn):
    yield
    proc = run_playbook("playbooks/provision.yml", "-e", "vse_state=absent", "-e", "vse_force=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in GUESTS:
        if os.path.exists(console(name)):
            os.unlink(console(name))


def test_two_guests_from_one_master_boot_beat_and_converge(conn, provisioned):
    first = run_playbook("playbooks/provision.yml")
    assert first.returncode == 0, first.stdout + first.stderr
    backing = set()
    for name in GUESTS:
        dom = conn.lookupByName(name)
        assert dom.isActive()
        beat = wait_beat(name)
        assert beat["host"] == name and beat["src"] == "disk"
        xml = dom.XMLDesc(0)
        assert "hpcvirt-tiny.qcow2" in xml and "layers=\"vendor,site,group" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        backing.add(name)
    assert len(backing) == 2
    second = run_playbook("playbooks/provision.yml", "-v")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "changed=0" in second.stdout, second.stdout


def test_duplicate_instance_names_are_refused(conn):
    proc = run_playbook("playbooks/provision.yml", extra_vars={
        "vse_instances": [{"name": "hpcvirt-vse-dup"}, {"name": "hpcvirt-vse-dup"}]})
    assert proc.returncode != 0
    assert "names must be unique" in proc.stdout
    assert "hpcvirt-vse-dup" not in [d.name() for d in conn.listAllDomains()]
