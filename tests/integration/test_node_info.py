"""node_info through ansible-playbook against the real local libvirtd and a real running guest."""

import os
import re
import subprocess

import libvirt
import pytest

from conftest import run_module, run_playbook

MODULE = "hpcvirt.regime.node_info"


@pytest.fixture
def pinned_guest(guest_factory, conn):
    """A running two-vCPU tiny guest with hand-set pins and shares, as an operator might leave it."""
    dom = guest_factory(vcpus=2)
    ncpus = conn.getCPUMap()[0]
    live = libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.pinVcpuFlags(0, tuple(i == 0 for i in range(ncpus)), live)
    dom.pinVcpuFlags(1, tuple(i == ncpus - 1 for i in range(ncpus)), live)
    dom.pinEmulator(tuple(i == 0 for i in range(ncpus)), live)
    dom.setSchedulerParametersFlags({"cpu_shares": 512}, live)
    return dom


def test_reports_guest_pinning_as_libvirt_does(pinned_guest, conn):
    result = run_module(MODULE, {"domains": [pinned_guest.name()]})
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    (dom,) = result["domains"]
    ncpus = conn.getCPUMap()[0]
    # What libvirt itself says, converted to cpu-lists, must be what the module reports.
    expected = {str(v): ",".join(str(c) for c, on in enumerate(m) if on)
                for v, m in enumerate(pinned_guest.vcpuPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE))}
    assert dom["vcpu_pins"] == expected
    assert dom["vcpu_pins"] == {"0": "0", "1": str(ncpus - 1)}
    assert dom["emulator_pin"] == "0"
    assert dom["scheduler"]["cpu_shares"] == 512
    assert dom["state"] == "running" and dom["active"] is True
    assert dom["vcpus"] == {"current": 2, "maximum": 2}
    assert dom["domain_type"] == "qemu"
    assert dom["memory_backing"]["hugepages"] == []
    assert dom["vcpu_running_on"]["0"] == 0


def test_node_facts_match_the_kernel(pinned_guest):
    result = run_module(MODULE, {"include_cpus": True})
    assert not result.get("failed"), result.get("msg")
    with open("/sys/devices/system/cpu/online") as handle:
        online = handle.read().strip()
    from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import format_cpulist, parse_cpulist
    assert result["topology"]["online"] == format_cpulist(parse_cpulist(online))
    assert len(result["topology"]["cpus"]) == result["topology"]["cpu_count"]
    assert result["cgroup"]["cpuset_version"] in (1, 2)
    assert result["cgroup"]["machine_cgroup_exists"] is True
    assert result["regime"]["name"] in ("time_shared", "space_shared", "mixed")
    names = [d["name"] for d in result["domains"]]
    assert pinned_guest.name() in names
    assert set(result["timings"]) >= {"read", "hypervisor"}


def test_stopped_guest_reports_config(guest_factory):
    dom = guest_factory()
    dom.destroy()
    result = run_module(MODULE, {"domains": [dom.name()]})
    (info,) = result["domains"]
    assert info["state"] == "shutoff" and info["id"] is None
    assert info["vcpu_pins"] == {"0": info["vcpu_pins"]["0"]}
    assert info["vcpu_running_on"] == {}


def test_check_mode_and_missing_domains():
    result = run_module(MODULE, {"domains": ["hpcvirt-it-does-not-exist"], "include_cpus": False}, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["domains"] == []
    assert result["missing_domains"] == ["hpcvirt-it-does-not-exist"]
    assert "cpus" not in result["topology"]


@pytest.mark.parametrize("uri, words", [
    ("bogus:///nothing", "uri: cannot connect to libvirt at 'bogus:///nothing'"),
    ("qemu+unix:///system?socket=/nonexistent/libvirt-sock", "Check that the URI is right"),
])
def test_bad_uri_is_one_clear_message(uri, words):
    result = run_module(MODULE, {"uri": uri})
    assert result["failed"] is True
    assert words in result["msg"]
    assert "Traceback" not in result["msg"]
    assert "module_stderr" not in result


def test_missing_libvirt_python_names_the_fix(tmp_path):
    bare = tmp_path / "bare"
    # A Python that cannot import libvirt: a venv of the node's Python without system packages.
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(bare)], check=True)
    result = run_module(MODULE, {}, interpreter=str(bare / "bin" / "python3"))
    assert result["failed"] is True
    assert "libvirt-python" in result["msg"] and "python3-libvirt" in result["msg"]
    assert "module_stderr" not in result


def test_status_playbook_prints_the_guest(pinned_guest):
    proc = run_playbook("playbooks/status.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "localhost (" in proc.stdout and re.search(r"\) is (time_shared|space_shared|mixed) \(", proc.stdout)
    assert "- %s: running, 2 of 2 vCPUs" % pinned_guest.name() in proc.stdout
    assert "vCPU pins 0 %d" % (os.cpu_count() - 1) in proc.stdout
    assert re.search(r"localhost +\w+ +s0\[", proc.stdout)        # the core map line of the node


def test_guest_that_vanishes_while_listed_is_skipped(conn):
    """A transient guest undefined between listing and reading must not fail the whole report."""
    import testbed
    from ansible_collections.hpcvirt.regime.plugins.module_utils._node import read_guests

    name = "hpcvirt-it-vanish"
    disk = testbed.create_overlay(conn, name)
    dom = conn.createXML(testbed.guest_xml(name, disk), 0)   # transient: gone once destroyed
    try:
        dom.destroy()

        assert read_guests(libvirt, [dom], {}, frozenset(), {}) == []
    finally:
        testbed.remove(conn, name)
