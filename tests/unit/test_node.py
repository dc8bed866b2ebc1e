import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import detect_layout
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import (
    classify_placement,
    infer_regime,
    observe_layout,
    parse_domain_xml,
)
from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import read_topology

PARTS = {"p0": {"cpus": "2-3"}, "p1": {"cpus": "4-7"}}
POOL = frozenset({0, 1, 8, 9})


@pytest.mark.parametrize("pins, expected", [
    ([{2}, {3}], ("dedicated", "p0")),
    ([{4}, {5}, {6}, {7}], ("dedicated", "p1")),
    ([{2}, {2}], ("custom", None)),          # two vCPUs on one CPU is not dedicated
    ([{3}, {4}], ("custom", None)),          # across two partitions
    ([{0, 1, 8, 9}, {0, 1, 8, 9}], ("shared", None)),
    ([{0}, {1}], ("shared", None)),          # pinned 1:1 but inside the pool: still pool CPUs
    ([{0, 1, 2}], ("custom", None)),         # floats into a partition
    ([], ("custom", None)),
])
def test_classify_placement(pins, expected):
    assert classify_placement(pins, PARTS, POOL) == expected


def test_infer_regime():
    assert infer_regime({"partitions": [], "pool": "0-7", "housekeeping": "0"}) == "time_shared"
    assert infer_regime({"partitions": [{"name": "a"}], "pool": "0", "housekeeping": "0"}) == "space_shared"
    assert infer_regime({"partitions": [{"name": "a"}], "pool": "", "housekeeping": "0"}) == "space_shared"
    assert infer_regime({"partitions": [{"name": "a"}], "pool": "0-3", "housekeeping": "0"}) == "mixed"


def test_observe_uncarved_node(sysfs_tree):
    root = sysfs_tree("thismachine")
    layout = observe_layout(read_topology(root), detect_layout(root))
    assert layout == {"housekeeping": "0,1", "pool": "0,1", "partitions": [], "unassigned": "",
                      "source": "default"}


def test_observe_with_layout_file_and_partition(sysfs_tree):
    root = sysfs_tree("server-2s-4numa", {
        "/sys/fs/cgroup/machine.slice/hpcvirt-mpi.partition/cpuset.cpus": "16-31,80-95\n",
        "/sys/fs/cgroup/machine.slice/hpcvirt-mpi.partition/cpuset.mems": "1\n",
        "/sys/fs/cgroup/machine.slice/hpcvirt-mpi.partition/cpuset.cpus.partition": "isolated\n",
    })
    layout = observe_layout(read_topology(root), detect_layout(root),
                            {"housekeeping": "0-1,64-65", "pool": "32-63,96-127"})
    assert layout["source"] == "layout_file"
    assert layout["partitions"][0]["name"] == "mpi"
    assert layout["partitions"][0]["exclusive"] is True
    assert layout["partitions"][0]["mems"] == "1"
    assert layout["unassigned"] == "2-15,66-79"
    assert infer_regime(layout) == "mixed"


DOMAIN = """<domain type='kvm'>
  <name>mpi-0</name>
  <vcpu placement='static' current='2'>4</vcpu>
  <metadata>
    <hpcvirt:regime xmlns:hpcvirt="https://hpcvirt.dev/xmlns/regime/1">
      <hpcvirt:placement mode="dedicated" partition="mpi"/>
    </hpcvirt:regime>
  </metadata>
  <cputune><shares>2048</shares><quota>50000</quota></cputune>
  <memoryBacking><hugepages><page size='2048' unit='KiB' nodeset='0'/></hugepages><locked/></memoryBacking>
  <numatune><memory mode='restrictive' nodeset='1'/></numatune>
  <resource><partition>/machine</partition></resource>
</domain>"""


def test_parse_domain_xml():
    parsed = parse_domain_xml(DOMAIN)
    assert parsed["type"] == "kvm"
    assert parsed["vcpus"] == {"current": 2, "maximum": 4}
    assert parsed["cputune"] == {"shares": 2048, "quota": 50000}
    assert parsed["memory_backing"] == {"hugepages": [{"size": "2048", "unit": "KiB", "nodeset": "0"}], "locked": True}
    assert parsed["numatune"] == {"mode": "restrictive", "nodeset": "1", "placement": None}
    assert parsed["resource_partition"] == "/machine"
    assert parsed["metadata"] == {"placement": {"mode": "dedicated", "partition": "mpi"}}


def test_parse_plain_domain_xml():
    parsed = parse_domain_xml("<domain type='qemu'><name>x</name><vcpu>1</vcpu></domain>")
    assert parsed["vcpus"] == {"current": 1, "maximum": 1}
    assert parsed["memory_backing"] == {"hugepages": [], "locked": False}
    assert parsed["metadata"] == {}
    assert parsed["numatune"] == {}
