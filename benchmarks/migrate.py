"""Benchmark: 20 live migrations of the tiny guest between node 1 and hpcvirt-node2.

Starts the extra node (tools/multinode/nodes.sh), boots a movable tiny guest on node 1, moves it
back and forth with the migrate module's own composition (``_migrate.converge``: read both nodes,
plan, execute the steps migrate, place, record; peer-to-peer, persistent on the destination,
shared disk, UNIX-socket transport), reads libvirt's completed job statistics on each
destination, and checks the heartbeat went on without a reboot. Prints a table (one row per
migration: downtime, libvirt's total, the migrate step, the whole module run and its read of both
nodes) and ends with one JSON line:

    {"migrations": 20, "downtime_ms_p50": ..., "downtime_ms_max": ..., "total_ms_p50": ..., "wall_ms_p50": ...}

Run as root, under the node lock: ``.venv/bin/python benchmarks/migrate.py [--count N] [--smoke]
[--keep-nodes]``. ``--smoke`` moves the guest 4 times (well under a minute); nothing is asserted
on time.
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "integration"), os.path.join(ROOT, "tools")]
# Importing conftest makes ansible_collections.hpcvirt.regime importable.
import conftest  # noqa: E402,F401 pylint: disable=unused-import

import libvirt  # noqa: E402

import testbed  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils import _migrate as mg  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Timings  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.modules.migrate import argument_spec  # noqa: E402
from multinode_nodes import NODE1, NODE2, SOCKET_DIR, boot_shared, nodes, remove_everywhere  # noqa: E402

NAME = "hpcvirt-mig-bench"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="4 migrations, well under a minute")
    parser.add_argument("--keep-nodes", action="store_true", help="leave hpcvirt-node2 running afterwards")
    args = parser.parse_args()
    if args.smoke:
        args.count = 4
    if args.count < 1:
        parser.error("--count: at least 1")
    defaults = {key: spec.get("default") for key, spec in argument_spec().items()}

    nodes("start")
    conns = {NODE1: libvirt.open(NODE1), NODE2: libvirt.open(NODE2)}
    remove_everywhere(list(conns.values()), NAME)
    rows = []
    try:
        boot_shared(conns[NODE1], NAME)
        header = ("#", "hop", "downtime ms", "total ms", "migrate ms", "module ms", "read ms")
        print("%-3s %-14s %12s %9s %11s %10s %8s" % header)
        with testbed.HeartbeatTail(NAME) as tail:
            here, there = NODE1, NODE2
            for i in range(args.count):
                params = dict(defaults, name=NAME, uri=here, dest_uri=there, socket_dir=SOCKET_DIR, unsafe=True,
                              vcpu_overcommit=0)
                timings = Timings()
                start = time.monotonic()
                result = mg.converge(libvirt, conns[here], conns[there], params, False, timings)
                wall_ms = (time.monotonic() - start) * 1000.0
                stats = result["stats"]
                rows.append({"downtime_ms": stats["downtime_ms"], "total_ms": stats["total_ms"],
                             "migrate_ms": timings.ms["migrate"], "wall_ms": wall_ms, "read_ms": timings.ms["read"]})
                print("%-3d %-14s %12d %9d %11.0f %10.0f %8.0f"
                      % (i + 1, "node1 -> node2" if here == NODE1 else "node2 -> node1", stats["downtime_ms"],
                         stats["total_ms"], timings.ms["migrate"], wall_ms, timings.ms["read"]))
                here, there = there, here
            testbed.wait_for_beats(NAME, 3)
        restarts = tail.restarts()
    finally:
        remove_everywhere(list(conns.values()), NAME)
        if not args.keep_nodes:
            nodes("stop")
    downtimes = [r["downtime_ms"] for r in rows]
    print(json.dumps({
        "migrations": len(rows),
        "downtime_ms_p50": percentile(downtimes, 0.5),
        "downtime_ms_max": max(downtimes),
        "total_ms_p50": percentile([r["total_ms"] for r in rows], 0.5),
        "migrate_step_ms_p50": round(percentile([r["migrate_ms"] for r in rows], 0.5), 1),
        "wall_ms_p50": round(percentile([r["wall_ms"] for r in rows], 0.5), 1),
        "read_ms_p50": round(percentile([r["read_ms"] for r in rows], 0.5), 1),
        "heartbeat_restarts": restarts,
        "guest": "tiny, 128 MiB, TCG, 1 vCPU",
    }))
    return 0 if restarts == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
