"""node_info-shaped results for the core map tests: a 2-socket SMT node carved into partitions, and
an uncarved small node."""


def _cpus(sockets, cores_per_socket, threads, numa_per_socket=1):
    cpus = []
    ncores = sockets * cores_per_socket
    for thread in range(threads):
        for core in range(ncores):
            socket = core // cores_per_socket
            node = socket * numa_per_socket + (core % cores_per_socket) * numa_per_socket // cores_per_socket
            cpus.append({"id": thread * ncores + core, "core": core % cores_per_socket, "socket": socket,
                         "node": node, "siblings": ""})
    return cpus


def _numa(cpus, ids, hugepages_total=512, hugepages_free=256):
    out = []
    for nid in ids:
        mine = sorted(c["id"] for c in cpus if c["node"] == nid)
        out.append({"id": nid, "cpus": ",".join(str(c) for c in mine), "mem_total_kb": 64 << 20,
                    "mem_free_kb": 32 << 20,
                    "hugepages": {"2048": {"total": hugepages_total, "free": hugepages_free},
                                  "1048576": {"total": 0, "free": 0}}})
    return out


def guest(name, pins, mode, partition=None, active=True, memory_kb=1 << 20, **meta):
    return {"name": name, "state": "running" if active else "shutoff", "active": active,
            "vcpus": {"current": len(pins), "maximum": len(pins)},
            "vcpu_pins": {str(i): p for i, p in enumerate(pins)}, "memory_kb": memory_kb,
            "memory_backing": {"hugepages": mode == "dedicated"}, "hpcvirt": meta,
            "placement": {"observed": mode, "partition": partition, "intent": mode, "intent_partition": partition}}


def big_node(guests=None, hostname="rack1-n01"):
    """2 sockets x 4 cores x 2 threads = 16 CPUs, 2 NUMA nodes; housekeeping 0,8; p1 = cores 1-2 of
    socket 0, p2 = cores 1-2 of socket 1 (SMT siblings), pool the rest."""
    cpus = _cpus(2, 4, 2)
    return {
        "hostname": hostname,
        "topology": {"online": "0-15", "cpu_count": 16, "sockets": 2, "cores": 8, "smt": True,
                     "cpus": cpus, "numa_nodes": _numa(cpus, [0, 1])},
        "layout": {"housekeeping": "0,8", "pool": "3,7,11,15",
                   "partitions": [{"name": "p1", "cpus": "1-2,9-10", "mems": "0", "partition_state": "member"},
                                  {"name": "p2", "cpus": "5-6,13-14", "mems": "1", "partition_state": "member"}],
                   "source": "layout_file"},
        "regime": {"name": "mixed", "source": "recorded", "recorded_at": "2026-12-02T05:00:00+00:00"},
        "domains": guests if guests is not None else [
            guest("mpi-0", ["1", "2", "9", "10"], "dedicated", "p1"),
            guest("web-1", ["3,7,11,15", "3,7,11,15"], "shared"),
            guest("web-2", ["3,7,11,15"], "shared", migration={"home_host": "rack2-n01"}),
        ],
    }


def small_node(guests=(), hostname="vm"):
    """2 CPUs, one NUMA node, never carved: housekeeping and pool both every CPU."""
    cpus = [{"id": 0, "core": 0, "socket": 0, "node": 0, "siblings": "0"},
            {"id": 1, "core": 1, "socket": 0, "node": 0, "siblings": "1"}]
    return {"hostname": hostname,
            "topology": {"online": "0,1", "cpu_count": 2, "sockets": 1, "cores": 2, "smt": False, "cpus": cpus,
                         "numa_nodes": _numa(cpus, [0], 0, 0)},
            "layout": {"housekeeping": "0,1", "pool": "0,1", "partitions": [], "source": "default"},
            "regime": {"name": "time_shared", "source": "inferred", "recorded_at": None},
            "domains": list(guests)}
