"""Unit tests of address allocation and stable MACs."""

import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils import _address
from ansible_collections.hpcvirt.regime.plugins.module_utils._address import (
    AddressError,
    allocate_ip,
    range_size,
    stable_mac,
)


def test_mac_is_stable_per_name_and_index():
    assert stable_mac("a") == stable_mac("a")
    assert stable_mac("a") != stable_mac("b")
    assert stable_mac("a", 0) != stable_mac("a", 1)
    assert stable_mac("a").startswith("52:54:00:")


def test_range_forms():
    assert range_size("10.0.0.0/29") == 6          # network and broadcast excluded
    assert range_size("10.0.0.10-10.0.0.19") == 10
    with pytest.raises(AddressError):
        range_size("10.0.0.9-nonsense")


def test_allocation_is_deterministic_and_avoids_taken():
    first = allocate_ip("node-a", "10.0.0.0/24", taken=())
    assert allocate_ip("node-a", "10.0.0.0/24", taken=()) == first
    other = allocate_ip("node-a", "10.0.0.0/24", taken=[first])
    assert other != first
    assert allocate_ip("node-a", "10.0.0.0/24", taken=[first], current=other) == other


def test_a_guest_keeps_its_address():
    assert allocate_ip("x", "10.0.0.0/24", taken=["10.0.0.7"], current="10.0.0.42") == "10.0.0.42"
    # ... unless another guest holds it now
    assert allocate_ip("x", "10.0.0.0/24", taken=["10.0.0.42"], current="10.0.0.42") != "10.0.0.42"


def test_every_address_handed_out_once_then_exhausted():
    taken = []
    for i in range(6):
        taken.append(allocate_ip("g%d" % i, "10.0.0.0/29", taken))
    assert len(set(taken)) == 6
    with pytest.raises(AddressError, match="exhausted"):
        allocate_ip("g7", "10.0.0.0/29", taken)


def test_stdlib_fallback_gives_the_same_answers(monkeypatch):
    with_netaddr = [allocate_ip("n%d" % i, r, []) for i in range(5) for r in ("10.1.0.0/24", "10.2.0.5-10.2.0.9")]
    monkeypatch.setattr(_address, "netaddr", None)
    without = [allocate_ip("n%d" % i, r, []) for i in range(5) for r in ("10.1.0.0/24", "10.2.0.5-10.2.0.9")]
    assert with_netaddr == without
