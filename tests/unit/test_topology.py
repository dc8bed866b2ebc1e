import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._topology import (
    parse_cmdline,
    parse_size_kb,
    read_topology,
)


def test_server_two_sockets_four_nodes(sysfs_tree):
    topo = read_topology(sysfs_tree("server-2s-4numa"))
    assert len(topo.online) == 128
    assert topo.sockets == [0, 1]
    assert len(topo.cores()) == 64
    assert topo.smt
    assert sorted(topo.nodes) == [0, 1, 2, 3]
    assert topo.nodes[1].cpus == frozenset(range(16, 32)) | frozenset(range(80, 96))
    assert topo.cpus[80].siblings == {16, 80}
    assert topo.cpus[80].node == 1 and topo.cpus[80].socket == 0
    assert topo.cpus[100].socket == 1 and topo.cpus[100].node == 2
    # Each core lists its siblings together, in CPU order.
    assert topo.cores()[0] == (0, 64)
    assert topo.nodes_of({0, 40}) == {0, 2}


def test_server_hugepages_per_node(sysfs_tree):
    topo = read_topology(sysfs_tree("server-2s-4numa"))
    assert topo.hugepages[2048].total == 2048
    assert topo.hugepages[1048576].total == 16
    assert topo.nodes[0].hugepages[2048].total == 1024
    assert topo.nodes[0].hugepages[2048].free == 512
    assert topo.nodes[3].hugepages[1048576].total == 0
    assert topo.default_hugepage_kb == 1048576
    assert topo.nodes[2].mem_total_kb == 128 * 1024 * 1024


def test_server_cmdline(sysfs_tree):
    cmdline = read_topology(sysfs_tree("server-2s-4numa")).cmdline
    assert cmdline.isolcpus == frozenset(range(2, 16)) | frozenset(range(66, 80))
    assert cmdline.isolcpus_flags == ("managed_irq", "domain")
    assert cmdline.nohz_full == cmdline.isolcpus
    assert cmdline.rcu_nocbs == cmdline.isolcpus
    assert cmdline.default_hugepagesz_kb == 1048576
    assert cmdline.hugepages == {1048576: 16, 2048: 2048}


def test_this_machine(sysfs_tree):
    topo = read_topology(sysfs_tree("thismachine"))
    assert topo.online == {0, 1}
    assert list(topo.nodes) == [0]
    assert topo.nodes[0].cpus == {0, 1}
    assert 2048 in topo.hugepages
    assert not topo.cmdline.isolcpus
    data = topo.to_dict()
    assert data["cpu_count"] == 2
    assert data["numa_nodes"][0]["cpus"] == "0,1"


def test_offline_cpus_are_left_out(sysfs_tree):
    root = sysfs_tree("server-2s-4numa", {"/sys/devices/system/cpu/online": "0-63,65-127\n"})
    topo = read_topology(root)
    assert 64 not in topo.cpus
    assert topo.cores()[0] == (0,)
    assert 64 not in topo.nodes[0].cpus


def test_missing_numa_directory_means_one_node(tmp_path):
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemFree: 500 kB\n")
    topo = read_topology(str(tmp_path))
    assert topo.nodes[0].cpus == {0, 1, 2, 3}
    assert topo.nodes[0].mem_total_kb == 1000
    assert topo.cpus[3].siblings == {3}


@pytest.mark.parametrize("text, kb", [("2M", 2048), ("1G", 1048576), ("2048k", 2048), ("2097152", 2048), ("1GB", 1048576)])
def test_parse_size(text, kb):
    assert parse_size_kb(text) == kb


def test_parse_size_rejects():
    with pytest.raises(ValueError):
        parse_size_kb("lots")


def test_cmdline_stops_at_double_dash_and_reads_per_node_hugepages():
    cmdline = parse_cmdline("hugepagesz=2M hugepages=0:4,1:4 isolcpus=3 -- isolcpus=1-2")
    assert cmdline.hugepages == {2048: 8}
    assert cmdline.isolcpus == {3}
    assert cmdline.isolcpus_flags == ()
