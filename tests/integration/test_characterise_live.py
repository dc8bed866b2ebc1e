"""hpcvirt.regime.characterise on this machine: real probe, real load, real confinement."""

import os

import pytest

from conftest import run_module

PROBE_CGROUP = "/sys/fs/cgroup/cpuset/hpcvirt-noise-probe"
HOUSEKEEPING_CGROUP = "/sys/fs/cgroup/cpuset/hpcvirt-housekeeping"


@pytest.fixture
def carved():
    result = run_module("hpcvirt.regime.partition", {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]})
    assert not result.get("failed"), result.get("msg")
    yield
    assert not run_module("hpcvirt.regime.partition", {"state": "absent"}).get("failed")


def test_native_cells_on_the_partition_cpu_and_the_node_put_back(carved):
    check = run_module("hpcvirt.regime.characterise", {"environment": "native", "target": "partition", "seconds": 1},
                       check=True)
    assert not check.get("failed"), check.get("msg")
    assert check["measured"] is False and check["cells"] == [] and len(check["cells_planned"]) == 4
    assert not os.path.isdir(HOUSEKEEPING_CGROUP)

    result = run_module("hpcvirt.regime.characterise", {"environment": "native", "target": "partition", "seconds": 2})
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    cells = {(c["confinement"], c["load"]): c for c in result["cells"]}
    assert set(cells) == {("unconfined", "none"), ("unconfined", "host"), ("confined", "none"), ("confined", "host")}
    for cell in cells.values():
        assert cell["cpu"] == 1 and cell["cpus"] == [1]         # the probe ran on the partition CPU
        assert cell["intervals"] == 2 and cell["span_us"] > 0
        assert cell["noise_ppm"] is not None
    assert result["confinement_readback"]["confined"]["held"] is True
    assert result["confinement_readback"]["confined"]["escaped"] == []
    assert result["report"][0].startswith("OS noise on")
    # Left as found: unconfined, no transient cgroups, no journal.
    assert result["confinement_found"]["confined"] is False
    assert not os.path.isdir(HOUSEKEEPING_CGROUP) and not os.path.isdir(PROBE_CGROUP)
    assert not os.path.exists("/var/lib/hpcvirt/journal/characterise.json")


@pytest.mark.parametrize("args, field", [
    ({"environment": "native", "target": "pool", "seconds": 0}, "seconds"),
    ({"environment": "native", "cpu": 64}, "cpu"),
    ({"environment": "guest", "guest": "no-such-guest-here"}, "guest"),
    ({"environment": "native", "target": "pool", "probe": "/nonexistent/hpcvirt-noise"}, "probe"),
])
def test_bad_input_names_the_field_and_changes_nothing(carved, args, field):
    result = run_module("hpcvirt.regime.characterise", args)
    assert result.get("failed") and result["msg"].startswith(field), result.get("msg")
    assert not os.path.isdir(HOUSEKEEPING_CGROUP)
