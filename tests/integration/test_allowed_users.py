"""allowed_users enforced by libvirt's polkit access driver, for real.

hpcvirt-acl (tools/multinode/nodes.sh start-acl) is a namespaced libvirtd with
``access_drivers = [ "polkit" ]``, its own dbus-daemon and polkitd, and a private
/etc/polkit-1/rules.d. The rule file _access writes for a VSE with allowed_users=[user1] lets user1,
connecting to that node's socket as itself (runuser), list, look up, stop, start and open the
console of the VSE's guest, while user2 sees nothing and a guest outside the VSE stays hidden from
user1 too. Removing the rule file takes the access away again.
"""

import json
import os
import pwd
import subprocess
import time
from xml.etree import ElementTree

import libvirt
import pytest

import testbed
from multinode_nodes import NODES_DIR, NODES_SH, node_uri, qemu_owner

from ansible_collections.hpcvirt.regime.plugins.module_utils import _access

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: Unix users and a namespaced libvirtd")

ACL = "hpcvirt-acl"
URI = node_uri(ACL)
RULES = os.path.join(NODES_DIR, ACL, "rules")
VSE = "hpcvirt-acl-vse"
MINE = "hpcvirt-acl-mine"     # the VSE's guest
OTHER = "hpcvirt-acl-other"   # a guest of no VSE
USERS = ("hpcvirt-acl-u1", "hpcvirt-acl-u2")

# Runs as the unprivileged user: every step's result or libvirt's error, as JSON.
CLIENT = r"""
import json, sys
import libvirt
libvirt.registerErrorHandler(lambda c, e: None, None)
uri, mine, other, mode = sys.argv[1:5]
out = {}
def step(key, fn):
    try:
        out[key] = fn()
    except libvirt.libvirtError as exc:
        out[key] = {"error": str(exc)}
try:
    conn = libvirt.open(uri)
except libvirt.libvirtError as exc:
    print(json.dumps({"open": {"error": str(exc)}}))
    sys.exit(0)
out["open"] = True
step("list", lambda: sorted(d.name() for d in conn.listAllDomains(0)))
step("lookup_other", lambda: conn.lookupByName(other).name())
step("lookup", lambda: conn.lookupByName(mine).name())
if mode == "full":
    dom = conn.lookupByName(mine)
    step("state", lambda: dom.state()[0])
    step("stop", lambda: dom.destroy())
    step("state_stopped", lambda: dom.state()[0])
    step("start", lambda: dom.create())
    step("state_started", lambda: dom.state()[0])
    def console():
        stream = conn.newStream(0)
        dom.openConsole("serial1", stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        stream.abort()
        return "opened"
    step("console", console)
    step("undefine", lambda: dom.undefine())
print(json.dumps(out))
"""


def as_user(user, mode="full"):
    proc = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", CLIENT, URI, MINE, OTHER, mode],
                          capture_output=True, text=True, timeout=60, cwd="/", check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def denied(value):
    return isinstance(value, dict) and "error" in value


def lost_access(result):
    return denied(result["open"]) or denied(result.get("lookup"))


def until(predicate, timeout=20):
    """polkitd reloads its rules when the directory changes (inotify): wait for that, not a time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture(scope="module")
def acl_node():
    subprocess.run([NODES_SH, "start-acl"], capture_output=True, text=True, timeout=120, check=True)
    conn = libvirt.open(URI)
    yield conn
    for name in (MINE, OTHER):
        testbed.remove(conn, name)
    conn.close()
    for name in os.listdir(RULES):   # a failed test's rule files: the next run starts from none
        os.unlink(os.path.join(RULES, name))
    subprocess.run([NODES_SH, "stop-acl"], capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def two_users():
    for user in USERS:
        subprocess.run(["userdel", user], capture_output=True, check=False)   # left by an aborted run
        subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", user], capture_output=True, check=True)
    yield USERS
    for user in USERS:
        subprocess.run(["userdel", user], capture_output=True, check=True)
    for user in USERS:
        with pytest.raises(KeyError):
            pwd.getpwnam(user)


def boot(conn, name):
    testbed.remove(conn, name)
    os.makedirs(testbed.CONSOLE_DIR, exist_ok=True)
    disk = testbed.create_overlay(conn, name)
    os.chown(disk, *qemu_owner())
    root = ElementTree.fromstring(testbed.guest_xml(
        name, disk, extra_devices="<serial type='pty'><target port='1'/></serial>"))
    ElementTree.SubElement(root.find("devices/disk/source"), "seclabel", model="dac", relabel="no")
    dom = conn.defineXML(ElementTree.tostring(root, encoding="unicode"))
    dom.create()
    return dom


def test_listed_user_controls_the_vse_guest_and_no_one_else_sees_it(acl_node, two_users):
    user1, user2 = two_users
    boot(acl_node, MINE)
    boot(acl_node, OTHER)
    path = _access.rules_path(VSE, RULES)
    uuids = [acl_node.lookupByName(MINE).UUIDString()]
    steps = _access.plan(VSE, [user1], [MINE], uuids=uuids, rules_dir=RULES)
    assert [s["action"] for s in steps] == ["write", "write"]
    assert _access.apply_all(steps, check_mode=True) and not os.path.exists(path)   # check mode: plan only

    # Before any rule: an unprivileged user cannot even connect.
    assert denied(as_user(user1, "look")["open"])

    assert _access.apply_all(steps) is True
    assert not _access.apply_all(_access.plan(VSE, [user1], [MINE], uuids=uuids, rules_dir=RULES))  # idempotent
    seen = until(lambda: as_user(user1, "look").get("lookup") == MINE)
    assert seen, "polkitd never applied %s" % path

    result = as_user(user1)
    assert result["list"] == [MINE], result                       # the other guest is not listed
    assert denied(result["lookup_other"]), result
    assert result["lookup"] == MINE
    assert result["state"] == libvirt.VIR_DOMAIN_RUNNING
    assert result["stop"] == 0 and result["state_stopped"] == libvirt.VIR_DOMAIN_SHUTOFF, result
    assert result["start"] == 0 and result["state_started"] == libvirt.VIR_DOMAIN_RUNNING, result
    assert result["console"] == "opened", result
    assert denied(result["undefine"]), result                     # not in the granted actions
    assert acl_node.lookupByName(MINE).isPersistent()

    other = as_user(user2)
    assert denied(other["open"]) or (other["list"] == [] and denied(other["lookup"])), other
    assert "state" not in other or denied(other["state"])
    assert acl_node.lookupByName(MINE).isActive()

    # state absent: the file goes, and with it user1's access.
    gone = _access.plan(VSE, [user1], [MINE], state="absent", rules_dir=RULES)
    assert _access.apply_all(gone) and not os.path.exists(path) and os.listdir(RULES) == []
    lost = until(lambda: lost_access(as_user(user1, "look")))
    assert lost, "user1 kept access after the rule file was removed"
