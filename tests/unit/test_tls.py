"""Unit tests of the one clear message for libvirt's TLS failures (messages as libvirt 9.0 gives them)."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _tls

URI = "qemu+tls://10.250.0.3/system"


@pytest.mark.parametrize("message,expected", [
    ("Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
     "this host's CA certificate /etc/pki/CA/cacert.pem is missing or unreadable"),
    ("Cannot read certificate '/etc/pki/libvirt/clientcert.pem': Permission denied",
     "this host's client certificate /etc/pki/libvirt/clientcert.pem is missing"),
    ("Our own certificate /p/clientcert.pem failed validation against /p/cacert.pem: "
     "The certificate hasn't got a known issuer.",
     "client certificate /p/clientcert.pem is not valid against its CA certificate /p/cacert.pem "
     "(The certificate hasn't got a known issuer)"),
    ("authentication failed: Failed to verify peer's certificate", "the peer's certificate is not trusted"),
    ("Certificate [session] owner does not match the hostname 10.250.0.3",
     "does not name 10.250.0.3"),
    ("Unable to read TLS confirmation: Input/output error", "the peer refused this host's client certificate"),
    ("unable to connect to server at '10.250.0.3:16514': Connection refused",
     "nothing answers at 10.250.0.3:16514 (Connection refused)"),
    ("Unable to resolve address 'node3' service '16514': Temporary failure in name resolution",
     "the name node3 does not resolve"),
])
def test_each_tls_failure_gets_one_clear_message(message, expected):
    text = _tls.explain(message, URI)
    assert text.startswith("TLS connection to 10.250.0.3:16514 failed: ")
    assert expected in text


def test_pkipath_is_named_where_files_are_looked_for():
    text = _tls.explain("Unable to read TLS confirmation: Input/output error",
                        "qemu+tls://node3:16600/system?pkipath=/srv/pki")
    assert text.startswith("TLS connection to node3:16600 failed") and "pkipath /srv/pki" in text
    assert "/etc/pki" in _tls.explain("Unable to read TLS confirmation: Input/output error", URI)


@pytest.mark.parametrize("message,uri", [
    ("Domain not found: no domain with matching name 'x'", URI),
    ("operation failed: guest CPU doesn't match specification", URI),
    ("", URI),
    (None, URI),
    ("unable to connect to server at 'h:22': Connection refused", "qemu+ssh://h/system"),
])
def test_other_failures_are_not_tls_ones(message, uri):
    assert _tls.explain(message, uri) is None


def test_libvirt_error_objects_and_uri_helpers():
    class FakeLibvirtError(Exception):
        def get_error_message(self):
            return "Unable to read TLS confirmation: Input/output error"

    assert "refused" in _tls.explain_error(FakeLibvirtError("x"), URI)
    assert _tls.explain_error(ValueError("Unable to read TLS confirmation"), URI)
    assert _tls.is_tls_uri(URI) and not _tls.is_tls_uri("qemu:///system") and not _tls.is_tls_uri(None)
