"""Benchmark: 20 live migrations of the tiny guest between node 1 and hpcvirt-node2.

Starts the extra node (tools/multinode/nodes.sh), boots a movable tiny guest on node 1, moves it
back and forth with the collection's own migration code (the flags and parameters the migrate
module uses: peer-to-peer, persistent on the destination, shared disk, UNIX-socket transport),
reads libvirt's completed job statistics on each destination, and checks the heartbeat went on
without a reboot. Ends with one JSON line:

    {"migrations": 20, "downtime_ms_p50": ..., "downtime_ms_max": ..., "total_ms_p50": ..., "wall_ms_p50": ...}

Run as root: ``.venv/bin/python benchmarks/migrate.py [--count N] [--keep-nodes]``.
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
from multinode_nodes import NODE1, NODE2, SOCKET_DIR, boot_shared, nodes, remove_everywhere  # noqa: E402

NAME = "hpcvirt-mig-bench"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--keep-nodes", action="store_true", help="leave hpcvirt-node2 running afterwards")
    args = parser.parse_args()

    nodes("start")
    conns = {NODE1: libvirt.open(NODE1), NODE2: libvirt.open(NODE2)}
    remove_everywhere(list(conns.values()), NAME)
    rows = []
    try:
        boot_shared(conns[NODE1], NAME)
        flags = mg.flags_value(libvirt, mg.migration_flag_names("migrate", unsafe=True))
        params = mg.migration_params(NAME, socket_dir=SOCKET_DIR)
        with testbed.HeartbeatTail(NAME) as tail:
            here, there = NODE1, NODE2
            for i in range(args.count):
                dom = conns[here].lookupByName(NAME)
                start = time.monotonic()
                mg.migrate_guest(libvirt, dom, there, flags, params)
                wall_ms = (time.monotonic() - start) * 1000.0
                stats = mg.normalise_job_stats(
                    conns[there].lookupByName(NAME).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
                rows.append({"downtime_ms": stats["downtime_ms"], "total_ms": stats["total_ms"], "wall_ms": wall_ms})
                print("migration %2d %s -> %s: downtime %4d ms, total %5d ms, wall %6.0f ms"
                      % (i + 1, "node1" if here == NODE1 else "node2", "node1" if there == NODE1 else "node2",
                         stats["downtime_ms"], stats["total_ms"], wall_ms), file=sys.stderr)
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
        "wall_ms_p50": round(percentile([r["wall_ms"] for r in rows], 0.5), 1),
        "heartbeat_restarts": restarts,
        "guest": "tiny, 128 MiB, TCG, 1 vCPU",
    }))
    return 0 if restarts == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
