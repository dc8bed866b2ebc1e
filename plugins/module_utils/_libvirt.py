# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt connection and errors for modules.

Every module talks to libvirt through here so that a missing library, a wrong URI or a failed
API call ends in one ``fail_json`` that says what is wrong and how to fix it, never a traceback.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.hpcvirt.regime.plugins.module_utils._node import DOMAIN_STATES  # noqa: F401 (re-exported)

try:
    import libvirt
except ImportError:
    libvirt = None
    LIBVIRT_IMPORT_ERROR = traceback.format_exc()
else:
    LIBVIRT_IMPORT_ERROR = None

try:
    from lxml import etree  # noqa: F401 (re-exported for the XML helpers)
except ImportError:
    etree = None
    LXML_IMPORT_ERROR = traceback.format_exc()
else:
    LXML_IMPORT_ERROR = None

DEFAULT_URI = "qemu:///system"



def libvirt_argument_spec():
    return dict(uri=dict(type="str", default=DEFAULT_URI))


def require_libraries(module, need_lxml=True):
    """Fail with install advice when libvirt-python (or lxml) cannot be imported on the node."""
    if libvirt is None:
        module.fail_json(
            msg=missing_required_lib(
                "libvirt-python",
                reason="to talk to libvirtd on the node (Debian/Ubuntu: apt install python3-libvirt; "
                "RHEL: dnf install python3-libvirt; or pip install libvirt-python)",
            ),
            exception=LIBVIRT_IMPORT_ERROR,
        )
    if need_lxml and etree is None:
        module.fail_json(
            msg=missing_required_lib("lxml", reason="to read and build libvirt domain XML "
                                     "(apt install python3-lxml, or pip install lxml)"),
            exception=LXML_IMPORT_ERROR,
        )


def error_text(exc):
    """The libvirt message of an exception, without libvirt's own prefix noise."""
    if libvirt is not None and isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    return str(exc)


def _quiet(_ctx, _err):
    # libvirt prints every error to stderr by default; the exception carries it already.
    return None


def open_connection(module, uri=None):
    """Open a read-write connection to ``uri`` (the module's ``uri`` option by default)."""
    require_libraries(module, need_lxml=False)
    uri = uri or module.params.get("uri") or DEFAULT_URI
    libvirt.registerErrorHandler(_quiet, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        module.fail_json(
            msg="uri: cannot connect to libvirt at '%s': %s. Check that the URI is right and that "
                "libvirtd (or virtqemud) runs on the node and accepts this user." % (uri, error_text(exc)),
            uri=uri,
        )
    if conn is None:
        module.fail_json(msg="uri: libvirt returned no connection for '%s'" % uri, uri=uri)
    return conn


@contextmanager
def libvirt_errors(module, what, **extra):
    """Turn a libvirt error inside the block into ``fail_json`` naming ``what`` was being done."""
    try:
        yield
    except Exception as exc:  # libvirt.libvirtError, but libvirt may be absent in unit tests
        if libvirt is not None and isinstance(exc, libvirt.libvirtError):
            module.fail_json(msg="%s: %s" % (what, error_text(exc)), **extra)
        raise


def find_domain(conn, name):
    """The domain called ``name``, or None when libvirt has none by that name."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def host_cpu_count(conn):
    """Number of host CPUs as libvirt numbers them in cpumaps."""
    return conn.getCPUMap()[0]


def version_string(number):
    return "%d.%d.%d" % (number // 1000000, (number // 1000) % 1000, number % 1000)
