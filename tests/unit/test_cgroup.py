import pytest

from ansible_collections.hpcvirt.regime.plugins.module_utils._cgroup import (
    CgroupError,
    detect_layout,
    parse_mountinfo,
    partition_cgroup_name,
    partition_name_of,
)

V1_CPUSET = "/sys/fs/cgroup/cpuset"


def test_this_machine_is_hybrid_with_v1_cpuset(sysfs_tree):
    root = sysfs_tree("thismachine", {
        V1_CPUSET + "/machine/cpuset.cpus": "0-1\n",
        V1_CPUSET + "/machine/cpuset.mems": "0\n",
        V1_CPUSET + "/machine/qemu-1-web.libvirt-qemu/cpuset.cpus": "0-1\n",
        V1_CPUSET + "/machine/hpcvirt-p0.partition/cpuset.cpus": "1\n",
        V1_CPUSET + "/machine/hpcvirt-p0.partition/cpuset.cpu_exclusive": "1\n",
        V1_CPUSET + "/machine/hpcvirt-p0.partition/cpuset.sched_load_balance": "0\n",
    })
    layout = detect_layout(root)
    assert layout.mode == "hybrid"
    assert layout.cpuset_version == 1
    assert layout.cpuset_root.endswith(V1_CPUSET)
    assert layout.machine.path.endswith(V1_CPUSET + "/machine")
    assert not layout.systemd
    parts = layout.partitions()
    assert list(parts) == ["p0"]
    assert parts["p0"].cpus == {1}
    assert parts["p0"].partition_state == "isolated"
    assert parts["p0"].exclusive
    assert [c.name for c in layout.guest_cgroups()] == ["qemu-1-web.libvirt-qemu"]


def test_v2_systemd_server(sysfs_tree):
    root = sysfs_tree("server-2s-4numa", {
        "/sys/fs/cgroup/machine.slice/cpuset.cpus": "\n",
        "/sys/fs/cgroup/machine.slice/cpuset.cpus.effective": "0-127\n",
        "/sys/fs/cgroup/machine.slice/hpcvirt-mpi.partition/cpuset.cpus": "16-31\n",
        "/sys/fs/cgroup/machine.slice/hpcvirt-mpi.partition/cpuset.cpus.partition": "root invalid (Parent is not a partition root)\n",
    })
    layout = detect_layout(root)
    assert layout.mode == "v2"
    assert layout.cpuset_version == 2
    assert layout.systemd
    assert layout.machine.name == "machine.slice"
    assert layout.machine.effective_cpus == frozenset(range(128))
    part = layout.partitions()["mpi"]
    assert part.partition_state.startswith("root invalid")
    assert not part.exclusive


def test_machine_cgroup_not_created_yet(sysfs_tree):
    layout = detect_layout(sysfs_tree("server-2s-4numa"))
    assert layout.machine.name == "machine.slice"
    assert not layout.machine.exists()
    assert layout.partitions() == {}
    assert layout.to_dict()["machine_cgroup_exists"] is False


def test_v2_without_cpuset_controller(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text(
        "35 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu memory\n")
    layout = detect_layout(str(tmp_path))
    assert layout.cpuset_version is None and layout.machine is None
    assert layout.partitions() == {}


def test_no_cgroups_is_an_error(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n")
    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        detect_layout(str(tmp_path))


def test_mountinfo_escapes_and_optional_fields():
    text = ("40 30 0:35 / /sys/fs/cgroup/cpu\\040set rw shared:12 master:3 - cgroup cgroup rw,cpuset\n"
            "41 30 0:36 / /mnt rw - ext4 /dev/x rw\n")
    assert parse_mountinfo(text) == [("/sys/fs/cgroup/cpu set", "cgroup", ["rw", "cpuset"])]


def test_partition_names():
    assert partition_cgroup_name("mpi") == "hpcvirt-mpi.partition"
    assert partition_name_of("hpcvirt-mpi.partition") == "mpi"
    assert partition_name_of("hpcvirt-.partition") is None
    assert partition_name_of("qemu-1-x.libvirt-qemu") is None
