# -*- coding: utf-8 -*-
# Copyright (c) hpcvirt.regime contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses of guests: IPs from a range, deterministic per instance name, and stable MACs.

An instance name hashes to a starting point in the range; the first address from there on (wrapping
around) that no other hpcvirt guest on the node holds is its address. The same name over the same
set of taken addresses always gets the same address, and a guest that already has an address keeps
it. MACs are in QEMU's locally administered 52:54:00 prefix, the low three bytes from the name.

Ranges use netaddr (``10.0.0.10-10.0.0.50``, ``10.0.0.0/24``, ``10.0.0.0/24`` glob forms); the
standard library's ``ipaddress`` stands in when netaddr is not installed on the node.
"""

from __future__ import annotations

import hashlib
import ipaddress

try:
    import netaddr
except ImportError:  # the node may lack python3-netaddr; ipaddress covers the same forms
    netaddr = None


class AddressError(ValueError):
    pass


def _hash(text):
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)


def stable_mac(name, index=0):
    """A MAC derived from the instance name and the interface's index (52:54:00:xx:xx:xx)."""
    value = _hash("%s#%d" % (name, index))
    low = [(value >> shift) & 0xFF for shift in (16, 8, 0)]
    return "52:54:00:%02x:%02x:%02x" % tuple(low)


def _range_bounds(text):
    """(first, last, prefix, version) of a range ``a-b`` or network ``a/p`` (network/broadcast excluded)."""
    text = text.strip()
    try:
        if "-" in text:
            first_text, last_text = [part.strip() for part in text.split("-", 1)]
            if netaddr is not None:
                rng = netaddr.IPRange(first_text, last_text)
                return int(rng.first), int(rng.last), None, rng.version
            first, last = ipaddress.ip_address(first_text), ipaddress.ip_address(last_text)
            if first.version != last.version or last < first:
                raise ValueError("the range runs backwards or mixes IPv4 and IPv6")
            return int(first), int(last), None, first.version
        if netaddr is not None:
            net = netaddr.IPNetwork(text)
            first, last, prefix, version = int(net.first), int(net.last), net.prefixlen, net.version
        else:
            net = ipaddress.ip_network(text, strict=False)
            first, last = int(net.network_address), int(net.broadcast_address)
            prefix, version = net.prefixlen, net.version
        if last - first >= 2:
            first, last = first + 1, last - 1   # no network or broadcast address
        return first, last, prefix, version
    except (ValueError, TypeError) as exc:
        raise AddressError("'%s' is not an address range (a-b or network/prefix): %s" % (text, exc))
    except Exception as exc:  # netaddr's AddrFormatError
        raise AddressError("'%s' is not an address range (a-b or network/prefix): %s" % (text, exc))


def _to_text(value, version):
    return str(ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value))


def range_size(text):
    first, last, _prefix, _version = _range_bounds(text)
    return last - first + 1


def in_range(address, text):
    first, last, _prefix, _version = _range_bounds(text)
    try:
        value = int(ipaddress.ip_address(address.split("/")[0]))
    except ValueError:
        return False
    return first <= value <= last


def allocate_ip(name, range_text, taken, current=None):
    """The address of instance ``name`` in ``range_text``, avoiding ``taken``.

    ``current``: the address the guest holds now; kept when it is still in the range and free.
    Raises AddressError when every address of the range is taken.
    """
    first, last, _prefix, version = _range_bounds(range_text)
    taken_values = set()
    for address in taken:
        try:
            taken_values.add(int(ipaddress.ip_address(str(address).split("/", maxsplit=1)[0])))
        except ValueError:
            continue
    if current and in_range(current, range_text):
        value = int(ipaddress.ip_address(current.split("/")[0]))
        if value not in taken_values:
            return _to_text(value, version)
    size = last - first + 1
    start = _hash(name) % size
    for step in range(size):
        value = first + (start + step) % size
        if value not in taken_values:
            return _to_text(value, version)
    raise AddressError("address range %s is exhausted: all %d addresses are held by other hpcvirt guests "
                       "on this node; widen the range or remove guests" % (range_text, size))


def range_prefix(range_text):
    """The prefix length of a network range, None for an a-b range."""
    return _range_bounds(range_text)[2]


def range_addresses(range_text, count):
    """The first ``count`` addresses of a range in order, and its prefix length (None for a-b).

    For a fleet: member k gets the k-th address. Raises AddressError when the range holds fewer.
    """
    first, last, prefix, version = _range_bounds(range_text)
    size = last - first + 1
    if size < count:
        raise AddressError("address range %s holds %d addresses, %d members need one each" % (range_text, size, count))
    return [_to_text(first + offset, version) for offset in range(count)], prefix
