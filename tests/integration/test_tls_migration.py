"""Live migration between two namespaced libvirt nodes over qemu+tls:// (tools/multinode/nodes.sh).

hpcvirt-node2 and hpcvirt-node3 listen for TLS on their own test-bed addresses (10.250.0.2 and .3)
with certificates from the test bed's certtool CA. A tiny guest moves node2 -> node3 -> node2 with
peer-to-peer migrateToURI3 to ``qemu+tls://<addr>/system`` (the source libvirtd is the TLS client,
with its own /etc/pki), its heartbeat going on. A client certificate that is missing or from another
CA gives one clear error (_tls.explain), in a migration and in a plain connection.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

import libvirt
import pytest

import testbed
from multinode_nodes import NODES_DIR, NODES_SH, ROOT, boot_shared, find, node_uri, nodes

from ansible_collections.hpcvirt.regime.plugins.module_utils import _tls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaced libvirtds")

NODE2 = node_uri("hpcvirt-node2")
NODE3 = node_uri("hpcvirt-node3")
PKI = os.path.join(NODES_DIR, "pki")
BED_NS = "hpcvirt-bed"
NAME = "hpcvirt-tls-mig"
FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_UNSAFE)  # one shared overlay (relabel off)

CLIENT = r"""
import json, sys
import libvirt
from ansible_collections.hpcvirt.regime.plugins.module_utils import _tls
libvirt.registerErrorHandler(lambda c, e: None, None)
uri = sys.argv[1]
try:
    conn = libvirt.open(uri)
    print(json.dumps({"ok": True, "hostname": conn.getHostname()}))
    conn.close()
except libvirt.libvirtError as exc:
    print(json.dumps({"ok": False, "error": str(exc), "explained": _tls.explain_error(exc, uri)}))
"""


def tls_uri(name):
    return subprocess.run([NODES_SH, "tls-uri", name], capture_output=True, text=True, check=True).stdout.strip()


def bed_client(uri):
    """Connect from the test bed's network namespace (10.250.0.1), as a separate process."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".build", "collections"))
    proc = subprocess.run(["ip", "netns", "exec", BED_NS, "/usr/bin/python3", "-c", CLIENT, uri],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tls_nodes():
    started = nodes("start", 3)
    assert "PRIVATE KEY" not in started.stdout + started.stderr   # keys are never printed
    conns = [libvirt.open(NODE2), libvirt.open(NODE3)]
    yield conns
    for conn in conns:
        dom = find(conn, NAME)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
    testbed.remove(conns[0], NAME)
    for conn in conns:
        conn.close()
    nodes("stop", 3)


def running(conn, name):
    dom = find(conn, name)
    return dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_pki_follows_libvirts_layout_and_keeps_keys_private(tls_nodes):
    for name in ("hpcvirt-node2", "hpcvirt-node3"):
        pki = os.path.join(NODES_DIR, name, "pki")
        for path in ("CA/cacert.pem", "libvirt/servercert.pem", "libvirt/clientcert.pem"):
            assert os.path.getsize(os.path.join(pki, path)) > 0
        for key in ("libvirt/private/serverkey.pem", "libvirt/private/clientkey.pem"):
            assert os.stat(os.path.join(pki, key)).st_mode & 0o077 == 0, key
        text = subprocess.run(["certtool", "-i", "--infile", os.path.join(pki, "libvirt/servercert.pem")],
                              capture_output=True, text=True, check=True).stdout
        assert "DNSname: %s" % name in text and "IPAddress: 10.250.0.%s" % name[-1] in text
    assert tls_uri("hpcvirt-node3") == "qemu+tls://10.250.0.3/system"


def test_live_migration_over_tls_keeps_the_heartbeat(tls_nodes):
    node2, node3 = tls_nodes
    dest3, dest2 = tls_uri("hpcvirt-node3"), tls_uri("hpcvirt-node2")
    dom = boot_shared(node2, NAME)
    first = testbed.read_beats(NAME)[-1]
    with testbed.HeartbeatTail(NAME) as tail:
        began = time.monotonic()
        dom.migrateToURI3(dest3, {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.250.0.3"}, FLAGS)
        took_ms = (time.monotonic() - began) * 1000.0
        assert running(node3, NAME) and find(node2, NAME) is None
        assert node3.lookupByName(NAME).isPersistent()
        testbed.wait_for_beats(NAME, 5)
        node3.lookupByName(NAME).migrateToURI3(dest2, {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.250.0.2"}, FLAGS)
        assert running(node2, NAME) and find(node3, NAME) is None
        testbed.wait_for_beats(NAME, 5)
    beats = [beat for _unused, beat in tail.beats]
    gaps = tail.gaps_ms()
    print("TLS migration node2 -> node3: %.0f ms; largest heartbeat gap over both hops: %.0f ms"
          % (took_ms, max(gaps) if gaps else -1))   # a figure for the report, not an assertion
    assert tail.restarts() == 0, "the guest rebooted or its heartbeat went backwards"
    assert all(b["boot"] == first["boot"] for b in beats)
    assert beats[-1]["seq"] > first["seq"] + 5


def test_a_rogue_client_certificate_is_one_clear_error_and_the_guest_stays(tls_nodes):
    node2, node3 = tls_nodes
    if not running(node2, NAME):
        boot_shared(node2, NAME)
    dest = tls_uri("hpcvirt-node3") + "?pkipath=" + os.path.join(PKI, "rogue")
    with pytest.raises(libvirt.libvirtError) as err:
        node2.lookupByName(NAME).migrateToURI3(dest, {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://10.250.0.3"}, FLAGS)
    message = _tls.explain_error(err.value, dest)
    assert message is not None, err.value
    assert message.startswith("TLS connection to 10.250.0.3:16514 failed: the peer refused this host's "
                              "client certificate"), message
    assert running(node2, NAME) and find(node3, NAME) is None


def test_plain_connections_with_good_missing_and_wrong_certificates(tls_nodes):
    uri = tls_uri("hpcvirt-node2")
    good = bed_client(uri + "?pkipath=" + os.path.join(PKI, "client"))
    assert good == {"ok": True, "hostname": "hpcvirt-node2"}

    rogue = bed_client(uri + "?pkipath=" + os.path.join(PKI, "rogue"))
    assert not rogue["ok"] and "refused this host's client certificate" in rogue["explained"], rogue

    bare = tempfile.mkdtemp(prefix="hpcvirt-pki-")
    try:
        shutil.copy(os.path.join(PKI, "ca", "cacert.pem"), bare)     # the CA, but no client certificate
        missing_cert = bed_client(uri + "?pkipath=" + bare)
        assert not missing_cert["ok"] and "refused this host's client certificate" in missing_cert["explained"]
        os.unlink(os.path.join(bare, "cacert.pem"))
        missing_ca = bed_client(uri + "?pkipath=" + bare)
        assert missing_ca["explained"] == (
            "TLS connection to 10.250.0.2:16514 failed: this host's CA certificate %s/cacert.pem is missing or "
            "unreadable; a TLS client needs pkipath %s (cacert.pem, clientcert.pem, private key clientkey.pem)"
            % (bare, bare)), missing_ca
    finally:
        shutil.rmtree(bare)

    nothing = bed_client("qemu+tls://10.250.0.9/system?pkipath=" + os.path.join(PKI, "client"))
    assert "nothing answers at 10.250.0.9:16514" in nothing["explained"], nothing
