"""Unit tests of the polkit rules that enforce a VSE's allowed_users (pure logic and file writes)."""

import json
import os
import re

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _access
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import StepFailed
from ansible_collections.hpcvirt.regime.plugins.module_utils._access import AccessError


def js_array(text, var):
    return json.loads(re.search(r"var %s = (\[.*?\]);" % var, text).group(1))


def test_rules_grant_listed_users_the_vse_guests_only():
    text = _access.render_rules("lab", ["bob", "alice", "bob"], ["lab-1", "lab-0"],
                                uuids=["6F0A2A0E-7D0A-4B1E-9D8E-0C6B1C1F0A01"])
    assert js_array(text, "users") == ["alice", "bob"]            # sorted, deduplicated
    assert js_array(text, "names") == ["lab-0", "lab-1"]
    assert js_array(text, "uuids") == ["6f0a2a0e-7d0a-4b1e-9d8e-0c6b1c1f0a01"]  # libvirt's lower case
    domain = js_array(text, "domain")
    for action in ("getattr", "read", "start", "stop", "open-device", "open-graphics"):
        assert "org.libvirt.api.domain." + action in domain
    assert "org.libvirt.api.domain.delete" not in domain and "org.libvirt.api.domain.write" not in domain
    assert js_array(text, "connect")[0] == "org.libvirt.unix.manage"
    assert 'action.lookup("domain_name")' in text and 'action.lookup("domain_uuid")' in text
    assert 'action.lookup("connect_driver") !== "QEMU"' in text
    assert text.count("polkit.Result.YES") == 3 and text.endswith("});\n")


def test_rendering_is_stable():
    one = _access.render_rules("lab", ["a", "b"], ["g2", "g1"])
    assert one == _access.render_rules("lab", ["b", "a"], ["g1", "g2"])


def test_no_users_means_no_file():
    assert _access.render_rules("lab", [], ["g"]) is None


@pytest.mark.parametrize("user", [
    "-rf", "a b", "al\"ice", "alice\n", "", "x" * 33, "1000", "..", "ro'ot", "a;b", "über", "a/b", None, 7,
])
def test_bad_user_names_are_refused_naming_the_field(user):
    with pytest.raises(AccessError) as err:
        _access.render_rules("lab", ["ok", user], ["g"])
    assert err.value.field == "allowed_users[1]"
    assert str(err.value).startswith("allowed_users[1]: ")


@pytest.mark.parametrize("user", ["alice", "a.b", "_svc", "svc-1", "A_b.c-d", "x" * 32, "u1000"])
def test_portable_user_names_pass(user):
    assert _access.validate_user(user) == user


@pytest.mark.parametrize("guest", ["g\n", "-g", "g\"); polkit.log(\"x", "../x", "a..b", "", "g" * 64, "a b", "g/h"])
def test_bad_guest_names_are_refused(guest):
    with pytest.raises(AccessError) as err:
        _access.render_rules("lab", ["alice"], [guest])
    assert err.value.field == "guests[0]"


@pytest.mark.parametrize("vse", ["../etc", "a/b", ".hidden", "x\n", "", "v" * 64, None])
def test_bad_vse_names_cannot_leave_the_rules_dir(vse, tmp_path):
    with pytest.raises(AccessError) as err:
        _access.plan_file(vse, ["alice"], ["g"], rules_dir=str(tmp_path))
    assert err.value.field == "name"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["not-a-uuid", "6f0a2a0e7d0a4b1e9d8e0c6b1c1f0a01", "{6f0a2a0e-7d0a-4b1e-9d8e-0c6b1c1f0a01}", 5])
def test_bad_uuids_are_refused(value):
    with pytest.raises(AccessError) as err:
        _access.render_rules("lab", ["alice"], ["g"], uuids=[value])
    assert err.value.field == "uuids[0]"


@pytest.mark.parametrize("field,kwargs", [
    ("allowed_users", {"users": "alice"}),
    ("guests", {"guests": "g1"}),
    ("allowed_users", {"users": ["u%d" % i for i in range(_access.MAX_USERS + 1)]}),
    ("actions[0]", {"actions": ["delete"]}),
])
def test_lists_and_actions_are_checked(field, kwargs):
    args = {"users": ["alice"], "guests": ["g"]}
    args.update(kwargs)
    actions = args.pop("actions", _access.DOMAIN_ACTIONS)
    with pytest.raises(AccessError) as err:
        _access.render_rules("lab", args["users"], args["guests"], actions=actions)
    assert err.value.field == field


def test_plan_apply_is_idempotent_and_check_mode_writes_nothing(tmp_path):
    rules = str(tmp_path)
    step = _access.plan_file("lab", ["alice"], ["lab-0"], rules_dir=rules)
    assert step["action"] == "write" and step["before"] is None
    assert step["path"] == os.path.join(rules, "60-hpcvirt-vse-lab.rules")
    assert _access.apply(step, check_mode=True) is True
    assert os.listdir(rules) == []                                   # check mode: plan only
    assert _access.apply(step) is True
    assert sorted(os.listdir(rules)) == ["60-hpcvirt-vse-lab.rules"]  # no temporary file left
    assert oct(os.stat(step["path"]).st_mode & 0o777) == "0o644"
    again = _access.plan_file("lab", ["alice"], ["lab-0"], rules_dir=rules)
    assert again["action"] == "none" and _access.apply(again) is False

    changed = _access.plan_file("lab", ["alice", "bob"], ["lab-0"], rules_dir=rules)
    assert changed["action"] == "write" and changed["before"] == step["after"]
    diff = _access.diff(changed)[0]
    assert diff["before_header"] == step["path"] and '"bob"' in diff["after"] and '"bob"' not in diff["before"]
    _access.apply(changed)
    assert js_array(open(step["path"]).read(), "users") == ["alice", "bob"]

    gone = _access.plan_file("lab", ["alice"], ["lab-0"], state="absent", rules_dir=rules)
    assert gone["action"] == "remove" and gone["after"] is None
    assert _access.apply(gone, check_mode=True) and os.path.exists(step["path"])
    assert _access.apply(gone) and not os.path.exists(step["path"])
    assert _access.plan_file("lab", [], [], state="absent", rules_dir=rules)["action"] == "none"
    # Emptying allowed_users removes the file, as absent does.
    _access.apply(_access.plan_file("lab", ["alice"], ["lab-0"], rules_dir=rules))
    assert _access.plan_file("lab", [], ["lab-0"], rules_dir=rules)["action"] == "remove"


def test_bad_state_is_refused(tmp_path):
    with pytest.raises(AccessError) as err:
        _access.plan_file("lab", ["alice"], ["g"], state="gone", rules_dir=str(tmp_path))
    assert err.value.field == "state"


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    rules = str(tmp_path)
    _access.apply(_access.plan_file("lab", ["alice"], ["g"], rules_dir=rules))
    before = open(os.path.join(rules, "60-hpcvirt-vse-lab.rules")).read()

    def broken(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_access.os, "replace", broken)
    with pytest.raises(StepFailed, match="write_rules .*60-hpcvirt-vse-lab.rules.*No space left on device"):
        _access.apply(_access.plan_file("lab", ["bob"], ["g"], rules_dir=rules))
    assert os.listdir(rules) == ["60-hpcvirt-vse-lab.rules"]
    assert open(os.path.join(rules, "60-hpcvirt-vse-lab.rules")).read() == before


def test_default_file_comes_with_the_first_vse_and_goes_with_the_last(tmp_path):
    rules = str(tmp_path)
    default = os.path.join(rules, _access.DEFAULT_RULES)
    steps = _access.plan("a", ["alice"], ["a-0"], rules_dir=rules)
    assert [os.path.basename(s["path"]) for s in steps] == [_access.DEFAULT_RULES, "60-hpcvirt-vse-a.rules"]
    assert [s["action"] for s in steps] == ["write", "write"]
    assert len(_access.diff(steps)) == 2
    assert _access.apply_all(steps, check_mode=True) and os.listdir(rules) == []
    assert _access.apply_all(steps)
    text = open(default).read()
    assert 'subject.isInGroup("libvirt")' in text and 'subject.user === "root"' in text
    assert text.count("polkit.Result.NO;") == 1 and 'indexOf("org.libvirt.api.") !== 0' in text
    assert _access.DEFAULT_RULES > "60-hpcvirt-vse-" + "z" * 63 + ".rules"   # read after every VSE file
    assert not _access.apply_all(_access.plan("a", ["alice"], ["a-0"], rules_dir=rules))
    _access.apply_all(_access.plan("b", ["bob"], ["b-0"], rules_dir=rules))
    # a goes: b's file still needs the default one.
    steps = _access.plan("a", [], [], state="absent", rules_dir=rules)
    assert [(os.path.basename(s["path"]), s["action"]) for s in steps] == [
        ("60-hpcvirt-vse-a.rules", "remove"), (_access.DEFAULT_RULES, "none")]
    _access.apply_all(steps)
    assert sorted(os.listdir(rules)) == ["60-hpcvirt-vse-b.rules", _access.DEFAULT_RULES]
    # b goes, the last one: its grant first, then the default file.
    steps = _access.plan("b", ["bob"], ["b-0"], state="absent", rules_dir=rules)
    assert [(os.path.basename(s["path"]), s["action"]) for s in steps] == [
        ("60-hpcvirt-vse-b.rules", "remove"), (_access.DEFAULT_RULES, "remove")]
    _access.apply_all(steps)
    assert os.listdir(rules) == []


@pytest.mark.parametrize("group", ["wheel\n", "a b", "", "\"x"])
def test_bad_admin_group_is_refused(group, tmp_path):
    with pytest.raises(AccessError) as err:
        _access.plan("a", ["alice"], ["g"], rules_dir=str(tmp_path), admin_group=group)
    assert err.value.field == "admin_group" and os.listdir(tmp_path) == []
