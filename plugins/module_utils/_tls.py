# -*- coding: utf-8 -*-
# Copyright: hpcvirt.regime contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt over TLS (qemu+tls://): turn libvirt's TLS failures into one clear message.

libvirt reports a TLS problem in one of several ways, depending on which side found it and when:
a file this host lacks, this host's own certificate not matching its CA, the peer's certificate not
trusted or not naming the host in the URI, the peer refusing this host's certificate (seen here only
as a failed read of the TLS confirmation), or nothing listening on the TLS port. :func:`explain`
recognises each and says what is wrong and where to fix it; anything else is not a TLS failure
(None) and the caller keeps libvirt's message. Only file paths are named, never their contents.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

TLS_PORT = 16514
PKI_LAYOUT = ("/etc/pki/CA/cacert.pem, /etc/pki/libvirt/clientcert.pem and "
              "/etc/pki/libvirt/private/clientkey.pem")

_FILE_KIND = {
    "CA certificate": "CA certificate",
    "CA revocation list": "CA revocation list",
    "certificate": "client certificate",
    "private key": "client private key",
}

_PATTERNS = (
    ("missing", re.compile(r"Cannot (?:read|access) (CA certificate|CA revocation list|certificate|private key)"
                           r" '([^']*)'(?::\s*(.*))?")),
    ("own", re.compile(r"Our own certificate (\S+) failed validation against (\S+?):\s*(.*)")),
    ("name", re.compile(r"Certificate (\S+) owner does not match the hostname (\S+)")),
    ("untrusted", re.compile(r"(?:Unable to verify TLS peer|Failed to verify peer's certificate)(?::\s*(.*))?")),
    ("refused", re.compile(r"Unable to read TLS confirmation|TLS handshake failed|"
                           r"The TLS connection was non-properly terminated|Error in the pull function")),
    ("unreachable", re.compile(r"unable to connect to server at '([^']*)':\s*(.*)")),
    ("resolve", re.compile(r"Unable to resolve address '([^']*)' service '([^']*)':\s*(.*)")),
)


def is_tls_uri(uri):
    if not isinstance(uri, str):
        return False
    try:
        return urlsplit(uri).scheme.endswith("+tls")
    except (ValueError, AttributeError):
        return False


def _peer(uri):
    """``host:port`` of a qemu+tls:// URI (port 16514 unless given); ``uri`` itself otherwise."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname or "localhost"
        port = parts.port or TLS_PORT
    except (ValueError, AttributeError):
        return str(uri)
    return "%s:%d" % (host, port)


def _pki(uri):
    try:
        query = parse_qs(urlsplit(uri).query)
    except (ValueError, AttributeError):
        return None
    paths = query.get("pkipath")
    return paths[0] if paths else None


def classify(message):
    """``(kind, match)`` for a libvirt TLS failure message, or ``(None, None)``."""
    text = str(message or "")
    for kind, pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            return kind, match
    return None, None


def explain(message, uri):
    """One clear sentence for a TLS failure connecting to ``uri``; None when it is not one."""
    kind, match = classify(message)
    if kind is None or (kind in ("unreachable", "resolve") and not is_tls_uri(uri)):
        return None
    peer = _peer(uri)
    pki = _pki(uri)
    where = ("pkipath %s (cacert.pem, clientcert.pem, private key clientkey.pem)" % pki if pki
             else PKI_LAYOUT)
    head = "TLS connection to %s failed: " % peer
    if kind == "missing":
        what = _FILE_KIND.get(match.group(1), match.group(1))
        return head + ("this host's %s %s is missing or unreadable; a TLS client needs %s"
                       % (what, match.group(2), where))
    if kind == "own":
        cert, ca, reason = match.group(1), match.group(2), match.group(3).rstrip(".")
        return head + ("this host's client certificate %s is not valid against its CA certificate %s (%s); "
                       "issue it from the CA the peers trust" % (cert, ca, reason))
    if kind == "name":
        return head + ("the peer's certificate %s does not name %s; the server certificate needs that "
                       "name or address as a subject alternative name" % (match.group(1), match.group(2)))
    if kind == "untrusted":
        reason = (match.group(1) or "").strip().rstrip(".")
        return head + ("the peer's certificate is not trusted%s; its server certificate must be issued by the "
                       "CA in this host's cacert.pem" % (" (%s)" % reason if reason else ""))
    if kind == "refused":
        return head + ("the peer refused this host's client certificate (missing, without its key, not issued "
                       "by the CA the peer trusts, or not in its tls_allowed_dn_list); check %s" % where)
    if kind == "unreachable":
        return head + ("nothing answers at %s (%s); is libvirtd listening for TLS there (listen_tls, "
                       "listen_addr, --listen)?" % (match.group(1), match.group(2).strip().rstrip(".")))
    return head + ("the name %s does not resolve (%s); use a name the resolver knows or the peer's address"
                   % (match.group(1), match.group(3).strip().rstrip(".")))


def explain_error(exc, uri):
    """:func:`explain` for a libvirtError (or any exception); None when not a TLS failure."""
    getter = getattr(exc, "get_error_message", None)
    message = getter() if callable(getter) else None
    return explain(message or str(exc), uri)
