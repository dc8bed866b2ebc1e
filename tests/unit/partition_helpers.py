"""Fake nodes for the partition planner: a recorded sysfs tree plus a cgroup tree and /proc/irq.

The cgroup trees here are plain files: v1 below /sys/fs/cgroup/cpuset, v2 below /sys/fs/cgroup.
The v2 kernel rules are enforced by ``FakeV2Kernel`` (test_cgroup_backend.py), stated as a fake.
"""

import os

_REAL_RMDIR = os.rmdir

from conftest import load_recording, materialise

V1_MOUNTINFO = "34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n"
V2_MOUNTINFO = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def v1_cgroup(path, cpus, mems="0", exclusive="0", tasks=""):
    return {
        path + "/cpuset.cpus": cpus, path + "/cpuset.mems": mems,
        path + "/cpuset.cpu_exclusive": exclusive, path + "/cpuset.mem_exclusive": "0",
        path + "/cpuset.sched_load_balance": "1", path + "/cgroup.procs": tasks,
    }


def v2_cgroup(path, cpus, mems="0", partition="member", tasks=""):
    return {
        path + "/cpuset.cpus": cpus, path + "/cpuset.mems": mems, path + "/cpuset.cpus.effective": cpus,
        path + "/cpuset.mems.effective": mems, path + "/cpuset.cpus.partition": partition,
        path + "/cpuset.cpus.exclusive": "", path + "/cgroup.procs": tasks,
    }


def fake_node(tmp_path, recording, version=1, machine_cpus=None, guests=None, irqs=None, extra=None):
    """A node root: ``recording`` + cgroup tree (machine cgroup with ``guests``: name -> cpus) + IRQs."""
    files = load_recording(recording)
    online = files["/sys/devices/system/cpu/online"].strip()
    mems = files["/sys/devices/system/node/online"].strip()
    machine_cpus = machine_cpus or online
    if version == 1:
        files["/proc/self/mountinfo"] = V1_MOUNTINFO
        base = "/sys/fs/cgroup/cpuset"
        files.update(v1_cgroup(base, online, mems, exclusive="1"))
        files.update(v1_cgroup(base + "/machine", machine_cpus, mems))
        for name, cpus in (guests or {}).items():
            files.update(v1_cgroup(base + "/machine/" + name, cpus, mems, tasks="4242"))
    else:
        files["/proc/self/mountinfo"] = V2_MOUNTINFO
        base = "/sys/fs/cgroup"
        files[base + "/cgroup.controllers"] = "cpuset cpu io memory pids"
        files[base + "/cpuset.cpus.effective"] = online
        files[base + "/cpuset.mems.effective"] = mems
        files.update(v2_cgroup(base + "/machine.slice", machine_cpus, mems))
        for name, cpus in (guests or {}).items():
            files.update(v2_cgroup(base + "/machine.slice/" + name, cpus, mems, tasks="4242"))
    files["/proc/1/comm"] = "init"
    for irq, cpus in (irqs or {}).items():
        files["/proc/irq/%s/smp_affinity_list" % irq] = cpus
    files.update(extra or {})
    root = str(tmp_path / ("node-" + recording))
    materialise(root, files)
    return root


def node_at(root):
    """The run's NodeState of a fake node (its layout file at etc/hpcvirt/layout.json below root)."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._node import NodeState
    return NodeState.read(root=root, layout_file="/etc/hpcvirt/layout.json")


def execute_plan(plan, root):
    """Carry a plan out through the one executor, as a module would."""
    from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Context, Timings, execute
    return execute(plan, Context(root=root), False, Timings())


def snapshot(root):
    """Every file below ``root`` and its content, to assert that nothing changed."""
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path) as handle:
                found[os.path.relpath(path, root)] = handle.read()
        found[os.path.relpath(dirpath, root) + "/"] = None
    return found


def fake_cgroupfs_rmdir(path):
    """rmdir as cgroupfs does it: the control files go with the directory (a fake, for file trees)."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full):
            raise OSError(16, "Device or resource busy")
        os.unlink(full)
    _REAL_RMDIR(path)
