"""The trust boundary: one validator per kind of value, each naming the field and the reason."""

import os

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _validate as v


@pytest.mark.parametrize("value, words", [
    ("web\n", "is not a valid name"),
    ("../etc", "is not a valid name"),
    ("x" * 201, "longer than 200"),
    ("", "a name is required"),
    (None, "a name is required"),
    ("a b", "is not a valid name"),
])
def test_names_match_whole_and_are_bounded(value, words):
    with pytest.raises(v.InvalidValue, match="^guests\\[0\\].name: .*" + words):
        v.name("guests[0].name", value)


def test_good_names_pass():
    assert v.name("f", "hpcvirt-vse-demo-1") == "hpcvirt-vse-demo-1"
    assert v.name("f", "a.b_c+d") == "a.b_c+d"


@pytest.mark.parametrize("value", ["x init=/bin/sh", "-start", "a..b", "a" * 64, "host_name", "x\n", ""])
def test_hostnames_follow_rfc_1123(value):
    with pytest.raises(v.InvalidValue, match="^networks\\[0\\].hostname: "):
        v.hostname("networks[0].hostname", value)


def test_good_hostnames_pass():
    assert v.hostname("h", "node-01.rack-a.example") == "node-01.rack-a.example"


@pytest.mark.parametrize("value", ["10.0.0.1 init=/bin/sh", "10.0.0", "256.1.1.1", "", "1.2.3.4\n", "0x7f.1"])
def test_addresses_go_through_netaddr(value):
    with pytest.raises(v.InvalidValue, match="^networks\\[0\\].ip: "):
        v.ip_address("networks[0].ip", value)


def test_addresses_and_prefixes_pass_in_canonical_form():
    assert v.ip_address("ip", "10.0.0.7", version=4) == "10.0.0.7"
    assert v.prefix("prefix", 24) == 24 and v.prefix("prefix", "16") == 16
    with pytest.raises(v.InvalidValue, match="prefix: prefix length 33 is outside 0..32"):
        v.prefix("prefix", 33)
    with pytest.raises(v.InvalidValue, match="prefix: '24 quiet' is not a prefix length"):
        v.prefix("prefix", "24 quiet")


def test_integers_and_sizes_are_bounded():
    assert v.integer("vcpus", 4, 1, 512) == 4
    with pytest.raises(v.InvalidValue, match="vcpus: 100000 is outside 1..512"):
        v.integer("vcpus", 100000, 1, 512)
    with pytest.raises(v.InvalidValue, match="vcpus: True is not a whole number"):
        v.integer("vcpus", True, 1, 512)
    assert v.size_kib("hugepages", "2M") == 2048 and v.size_kib("memory", "1GiB") == 1024 * 1024
    with pytest.raises(v.InvalidValue, match="memory: '9' \\* 40 is not a size|memory: .* is outside"):
        v.size_kib("memory", "9" * 20)


def test_slurm_values():
    with pytest.raises(v.InvalidValue, match="control characters '\\\\n'"):
        v.one_line("reason", "maintenance\nNodeName=node2 State=DOWN")
    assert v.one_line("reason", "hpcvirt: switching to space_shared") == "hpcvirt: switching to space_shared"
    for bad in ("a,b", "a&b", "a|b", "[a]", ""):
        with pytest.raises(v.InvalidValue, match="is not a Slurm feature name"):
            v.slurm_feature("features[0]", bad)
    assert v.slurm_feature("features[0]", "space_shared") == "space_shared"


def test_programs_are_the_named_one(tmp_path):
    assert v.program("scontrol", "scontrol", "scontrol") == "scontrol"
    with pytest.raises(v.InvalidValue, match="scontrol: '/bin/rm' must be 'scontrol'"):
        v.program("scontrol", "/bin/rm", "scontrol")
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n")
    with pytest.raises(v.InvalidValue, match="is not an executable file"):
        v.program("scontrol", str(fake), "scontrol")
    os.chmod(str(fake), 0o755)
    assert v.program("scontrol", str(fake), "scontrol") == str(fake)


def test_paths_are_confined_after_resolving_symlinks(tmp_path):
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "master.qcow2").write_text("")
    os.symlink("/etc/shadow", str(allowed / "sneaky"))
    assert v.confined_path("master", str(allowed / "master.qcow2"), [str(allowed)]) == str(allowed / "master.qcow2")
    for bad in (str(allowed / ".." / "x"), "/etc/shadow", str(allowed / "sneaky"), "relative/x", "a\0b"):
        with pytest.raises(v.InvalidValue, match="^master: "):
            v.confined_path("master", bad, [str(allowed)])
