# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation of the values that cross the trust boundary, one function per kind of value.

Module options, VSE layers (a user layer is written by an end user) and AWX survey answers all
reach the node through here before anything uses them. Every check raises ``InvalidValue`` whose
message starts with the field it is about and says why; nothing is expanded, joined into a path or
put on a command line before it has passed.
"""

from __future__ import annotations

import os
import re

from ansible_collections.hpcvirt.regime.plugins.module_utils._errors import HpcvirtError

# libvirt accepts long names, the filesystem 255 bytes for a file made from one (overlays, logs,
# journals add a prefix and suffix): 200 characters leaves room for them.
NAME_LIMIT = 200
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# RFC 1123 host name: labels of letters, digits and inner hyphens, at most 63 each, 253 in all.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# POSIX portable user names (as useradd accepts them by default).
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
# Slurm feature names: letters, digits, '_' and '.', no operators (',', '&', '|', '[', '*', ...).
_FEATURE = re.compile(r"[A-Za-z0-9_.]+")
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}


class InvalidValue(HpcvirtError, ValueError):
    """A value refused at the trust boundary; the message names the field and the reason."""


def name(field, value, limit=NAME_LIMIT, what="name"):
    """A guest, fleet, snapshot or VSE name: matched whole (no trailing newline), bounded."""
    if not isinstance(value, str) or not value:
        raise InvalidValue("%s: a %s is required (a string)" % (field, what))
    if len(value) > limit:
        raise InvalidValue("%s: a %s of %d characters is longer than %d" % (field, what, len(value), limit))
    if not _NAME.fullmatch(value):
        raise InvalidValue("%s: %r is not a valid %s (letters, digits, '.', '_', '+', '-'; starting with a "
                           "letter or digit)" % (field, value, what))
    return value


def hostname(field, value):
    """A host name per RFC 1123 (it goes onto a guest's kernel command line)."""
    if not isinstance(value, str) or not value or len(value) > 253:
        raise InvalidValue("%s: %r is not a host name (1 to 253 characters)" % (field, value))
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidValue("%s: %r is not a host name (RFC 1123: labels of letters, digits and inner '-', "
                           "at most 63 characters each, joined by '.')" % (field, value))
    return value


def user_name(field, value):
    if not isinstance(value, str) or not _USER.fullmatch(value):
        raise InvalidValue("%s: %r is not a Unix user name (lower-case letters, digits, '_', '-'; at most 32)"
                           % (field, value))
    return value


def ip_address(field, value, version=None):
    """An IP address, parsed by netaddr; returned in its canonical text form."""
    import netaddr

    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidValue("%s: %r is not an IP address" % (field, value))
    try:
        address = netaddr.IPAddress(value, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise InvalidValue("%s: %r is not an IP address" % (field, value))
    if version and address.version != version:
        raise InvalidValue("%s: %s is not an IPv%d address" % (field, value, version))
    return str(address)


def prefix(field, value, version=4):
    """A network prefix length: 0..32 for IPv4, 0..128 for IPv6."""
    top = 32 if version == 4 else 128
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit() and len(value) <= 3:
            value = int(value)
        else:
            raise InvalidValue("%s: %r is not a prefix length" % (field, value))
    if not 0 <= value <= top:
        raise InvalidValue("%s: prefix length %d is outside 0..%d" % (field, value, top))
    return value


def integer(field, value, low, high):
    """A whole number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue("%s: %r is not a whole number" % (field, value))
    if not low <= value <= high:
        raise InvalidValue("%s: %d is outside %d..%d" % (field, value, low, high))
    return value


def size_kib(field, value, low=1, high=2 ** 40):
    """A size (``2M``, ``1GiB``, ``512``: KiB by default) in KiB, bounded."""
    if isinstance(value, int) and not isinstance(value, bool):
        kib = value
    else:
        match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) and len(value) <= 32 else None
        if not match:
            raise InvalidValue("%s: %r is not a size (a number with K, M, G or T)" % (field, value))
        kib = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if not low <= kib <= high:
        raise InvalidValue("%s: %s KiB is outside %d..%d KiB" % (field, kib, low, high))
    return kib


def one_line(field, value, limit=512):
    """Text that must stay one line (a Slurm reason: a newline would forge a second record)."""
    if not isinstance(value, str):
        raise InvalidValue("%s: %r is not text" % (field, value))
    if len(value) > limit:
        raise InvalidValue("%s: %d characters is longer than %d" % (field, len(value), limit))
    bad = sorted({c for c in value if ord(c) < 32 or ord(c) == 127})
    if bad:
        raise InvalidValue("%s: control characters %s are not allowed (one line of text)"
                           % (field, ", ".join(repr(c) for c in bad)))
    return value


def slurm_feature(field, value):
    if not isinstance(value, str) or not value or len(value) > 64 or not _FEATURE.fullmatch(value):
        raise InvalidValue("%s: %r is not a Slurm feature name (letters, digits, '_', '.'; no ',' '&' '|' or "
                           "brackets, which are Slurm syntax)" % (field, value))
    return value


def program(field, value, expected_name):
    """A program to run: an absolute path to an executable called ``expected_name``, or that bare name."""
    if not isinstance(value, str) or not value:
        raise InvalidValue("%s: a program is required" % field)
    if value == expected_name:
        return value
    if not os.path.isabs(value) or os.path.basename(value) != expected_name:
        raise InvalidValue("%s: %r must be %r (found on PATH) or an absolute path to a program called %r"
                           % (field, value, expected_name, expected_name))
    if not (os.path.isfile(value) and os.access(value, os.X_OK)):
        raise InvalidValue("%s: %s is not an executable file" % (field, value))
    return value


def confined_path(field, value, allowed, must_exist=False):
    """``value`` resolved (symlinks too) and required to lie below one of the ``allowed`` directories.

    Returns the resolved path. A path that leaves them (``..``, a symlink pointing elsewhere, an
    absolute path elsewhere) is refused naming the field and the directories allowed.
    """
    if not isinstance(value, str) or not value or "\0" in value or len(value) > 4096:
        raise InvalidValue("%s: %r is not a path" % (field, value))
    if not os.path.isabs(value):
        raise InvalidValue("%s: %r must be an absolute path" % (field, value))
    resolved = os.path.realpath(value)
    roots = [os.path.realpath(directory) for directory in allowed]
    if not any(resolved == root or resolved.startswith(root.rstrip("/") + "/") for root in roots):
        raise InvalidValue("%s: %s%s is outside the directories this site allows (%s); add its directory "
                           "to the allowed list to use it" % (
                               field, value, " (%s)" % resolved if resolved != value else "", ", ".join(allowed)))
    if must_exist and not os.path.exists(resolved):
        raise InvalidValue("%s: %s does not exist" % (field, value))
    return resolved
