"""Lift and drop of real running guests on this machine's real cgroups and libvirt.

The node is carved with the partition module (housekeeping CPU 0, partition p1 = CPU 1, pool
falls back to housekeeping on a 2-CPU machine) and restored afterwards.
"""

import libvirt
import pytest

import testbed
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import cpumap_to_set
from ansible_collections.hpcvirt.regime.plugins.module_utils._metadata import read_domain_metadata
from conftest import run_module

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
MODULE = "hpcvirt.regime.placement"


@pytest.fixture
def carved():
    result = run_module("hpcvirt.regime.partition", {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]})
    assert not result.get("failed"), result.get("msg")
    yield result
    gone = run_module("hpcvirt.regime.partition", {"state": "absent"})
    assert not gone.get("failed"), gone.get("msg")


def pins(dom, flags):
    return [set(cpumap_to_set(m)) for m in dom.vcpuPinInfo(flags)]


def test_drop_and_lift_live_without_restart(carved, guest_factory):
    a = guest_factory()
    b = guest_factory()
    request = {"guests": [{"name": a.name(), "placement": "dedicated", "partition": "p1"},
                          {"name": b.name(), "placement": "shared"}]}
    with testbed.HeartbeatTail(a.name()) as beats:
        testbed.wait_for_beats(a.name(), 2)
        predicted = run_module(MODULE, request, check=True, diff=True)
        assert not predicted.get("failed"), predicted.get("msg")
        assert pins(a, LIVE) == [{0, 1}]                     # check mode changed nothing

        dropped = run_module(MODULE, request)
        assert not dropped.get("failed"), dropped.get("msg")
        assert dropped["changed"] is True
        assert dropped["plan"] == predicted["plan"]          # check mode predicted the run exactly
        assert [g["name"] for g in dropped["guests"]] == [b.name(), a.name()]   # lift before drop
        placed = {g["name"]: g for g in dropped["guests"]}
        assert placed[a.name()]["placement"] == {"mode": "dedicated", "partition": "p1", "cpus": "1"}
        assert placed[a.name()]["live_ms"] > 0
        assert pins(a, LIVE) == [{1}] and pins(a, CONFIG) == [{1}]
        assert cpumap_to_set(a.emulatorPinInfo(LIVE)) == {0}
        assert pins(b, LIVE) == [{0}]
        assert read_domain_metadata(a)["placement"] == {"mode": "dedicated", "partition": "p1"}
        assert read_domain_metadata(a, CONFIG)["placement"] == {"mode": "dedicated", "partition": "p1"}

        again = run_module(MODULE, request)
        assert again["changed"] is False and again["plan"] == []

        info = run_module("hpcvirt.regime.node_info", {"domains": [a.name()], "include_cpus": False})
        assert info["domains"][0]["placement"] == {"observed": "dedicated", "partition": "p1",
                                                   "intent": "dedicated", "intent_partition": "p1"}

        lifted = run_module(MODULE, {"guests": [{"name": a.name(), "placement": "shared", "cpu_shares": 512}]})
        assert not lifted.get("failed"), lifted.get("msg")
        assert pins(a, LIVE) == [{0}] and pins(a, CONFIG) == [{0}]
        assert a.schedulerParametersFlags(LIVE)["cpu_shares"] == 512
        assert a.schedulerParametersFlags(CONFIG)["cpu_shares"] == 512
        testbed.wait_for_beats(a.name(), 3)

    # The guest kept running through both moves: same boot, counter never went back.
    assert beats.restarts() == 0
    seqs = [beat["seq"] for _unused, beat in beats.beats]
    assert len(seqs) >= 5 and seqs == sorted(seqs)
    assert a.isActive() and b.isActive()


def test_refused_drop_changes_nothing(carved, guest_factory):
    a = guest_factory()
    b = guest_factory()
    first = run_module(MODULE, {"guests": [{"name": a.name(), "placement": "dedicated", "partition": "p1"},
                                           {"name": b.name(), "placement": "shared"}]})
    assert not first.get("failed"), first.get("msg")
    before = (pins(b, LIVE), pins(b, CONFIG), read_domain_metadata(b))

    refused = run_module(MODULE, {"guests": [{"name": b.name(), "placement": "dedicated", "partition": "p1"}]})
    assert refused["failed"] is True
    assert "guest '%s'" % b.name() in refused["msg"]
    assert "partition 'p1'" in refused["msg"]
    assert "CPU 1 used by %s" % a.name() in refused["msg"]
    assert (pins(b, LIVE), pins(b, CONFIG), read_domain_metadata(b)) == before


@pytest.mark.parametrize("guest, words", [
    ({"name": "hpcvirt-it-nobody", "placement": "shared"}, "no guest 'hpcvirt-it-nobody'"),
    ({"placement": "dedicated", "partition": "nope"}, "partition 'nope' does not exist"),
    ({"placement": "shared", "cpu_shares": 1}, "cpu_shares: 1 is outside 2..262144"),
])
def test_bad_requests_name_the_field(carved, guest_factory, guest, words):
    dom = guest_factory()
    before = pins(dom, LIVE)
    result = run_module(MODULE, {"guests": [dict({"name": dom.name()}, **guest)]})
    assert result["failed"] is True and words in result["msg"]
    assert pins(dom, LIVE) == before
