"""Live lift/drop against the cold way, side by side on this machine's real libvirt.

Run by hand (root, after `make setup`):  .venv/bin/python benchmarks/lift_drop.py [--cycles 20]
``--smoke`` (make test) runs the smallest size that exercises every path; its figures are printed, never asserted.

A heartbeat guest is dropped onto partition p1 and lifted back into the pool ``--cycles`` times
(beside ``--background`` shared guests), three ways in the same run:

* live: through the placement module's own code path (read the node, plan, apply live and
  persistent), timing the live libvirt changes as the module reports them;
* bare: the same pin and scheduler changes as direct libvirt calls, the floor for "live";
* cold: how users of community.libvirt change placement today: destroy the guest, redefine it
  with the new <cputune>, start it, and wait for its first heartbeat.

The heartbeat is followed on the host (tools/testbed.py HeartbeatTail), so a stall of the guest
shows as a gap. Each guest's noise probe (docs/guest-image.md; the enclave's spins all the time)
gives the disruption at microsecond resolution: every guest's largest detour while the live moves
ran, beside its largest detour in a quiet window of the same kind just before. Prints a table,
then one JSON line.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

import libvirt

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import testbed  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils._cpuset import set_to_cpumap  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils import _placement  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import NodeState  # noqa: E402
from ansible_collections.hpcvirt.regime.plugins.module_utils._plan import Context, execute  # noqa: E402
from conftest import run_module  # noqa: E402

GUEST = "hpcvirt-bench-enclave"
NOISE_MS = 200          # the guests' noise report interval
QUIET_S = 2.0           # the quiet window measured before the moves
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
STATES = {1: "running", 5: "shutoff"}


def percentile(values, pct):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100.0 * (len(ordered) - 1))))]


def place_through_module_code(conn, requests):
    """What hpcvirt.regime.placement does, minus Ansible: read, plan, apply; live ms per call."""
    node = NodeState.read(conn=conn, libvirt=libvirt)
    plan, _results = _placement.plan_module(node, {"guests": requests})
    execute(plan, Context(libvirt=libvirt, conn=conn, domains=node.domains, ncpus=node.ncpus, affect="both"),
            False, node.timings)
    return sum(step.ms for step in plan)


def wait_for_noise(tails, timeout=60):
    """Until every guest has printed two noise lines (its probe runs)."""
    deadline = time.monotonic() + timeout
    while any(len(t.noise) < 2 for t in tails.values()):
        if time.monotonic() > deadline:
            sys.exit("no noise lines from %s: is the guest image current (make image)?"
                     % ", ".join(n for n, t in tails.items() if len(t.noise) < 2))
        time.sleep(0.1)


def bare_move(dom, vcpu_cpus, emulator_cpus, ncpus):
    """The same placement change as plain libvirt calls."""
    start = time.monotonic()
    dom.pinVcpuFlags(0, set_to_cpumap(vcpu_cpus, ncpus), LIVE | CONFIG)
    dom.pinEmulator(set_to_cpumap(emulator_cpus, ncpus), LIVE | CONFIG)
    dom.setSchedulerParametersFlags({"vcpu_quota": -1}, LIVE)
    dom.setSchedulerParametersFlags({"vcpu_quota": -1}, CONFIG)
    return (time.monotonic() - start) * 1000.0


def cold_move(conn, dom, vcpu_cpus, emulator_cpus):
    """destroy, redefine with the new <cputune>, start, wait for the first heartbeat."""
    start = time.monotonic()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    xml = re.sub(r"\s*<cputune>.*?</cputune>", "", xml, flags=re.S)
    tune = "<cputune><vcpupin vcpu='0' cpuset='%s'/><emulatorpin cpuset='%s'/></cputune>" % (
        ",".join(map(str, sorted(vcpu_cpus))), ",".join(map(str, sorted(emulator_cpus))))
    xml = xml.replace("</vcpu>", "</vcpu>\n  " + tune, 1)
    dom.destroy()
    dom = conn.defineXML(xml)
    dom.create()
    testbed.wait_for_beats(dom.name(), 1, timeout=120)
    return dom, (time.monotonic() - start) * 1000.0


def fmt_us(value):
    return "-" if value is None else "%.1f" % value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=20, help="drop/lift cycles for live and bare")
    parser.add_argument("--cold-cycles", type=int, default=5, help="destroy/redefine/start moves")
    parser.add_argument("--background", type=int, default=2, help="shared guests beside the enclave")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest run that exercises every path (make test): 3 cycles, 1 cold move, 1 background guest")
    args = parser.parse_args()
    if args.smoke:
        args.cycles, args.cold_cycles, args.background = 3, 1, 1

    conn = testbed.connect()
    others = [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    if others:
        sys.exit("run on a quiet node: these guests are running and would share the CPUs measured: %s "
                 "(remove the demo guests with: ansible-playbook playbooks/provision.yml -e vse_state=absent "
                 "-e vse_force=true)" % ", ".join(sorted(others)))
    carve = run_module("hpcvirt.regime.partition", {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]})
    if carve.get("failed"):
        sys.exit("cannot carve partition p1: %s" % carve["msg"])
    background = ["hpcvirt-bench-bg%d" % i for i in range(args.background)]
    ncpus = conn.getCPUMap()[0]
    try:
        dom = testbed.boot(conn, GUEST, noise_duty=100, noise_ms=NOISE_MS)
        for name in background:
            testbed.boot(conn, name, noise_ms=NOISE_MS)
        # Background guests float over the pool (here the housekeeping CPU), like tenants would.
        place_through_module_code(conn, [{"name": n, "placement": "shared"} for n in background])
        interval_ms = 100.0
        live, bare, cold = [], [], []
        others_tails = {name: testbed.HeartbeatTail(name).start() for name in background}
        with testbed.HeartbeatTail(GUEST) as tail:
            tails = dict(others_tails, **{GUEST: tail})
            testbed.wait_for_beats(GUEST, 3)
            wait_for_noise(tails)
            quiet = (time.monotonic(), None)
            time.sleep(QUIET_S)
            quiet = (quiet[0], time.monotonic())
            time.sleep(2 * NOISE_MS / 1000.0)       # the line closing the quiet window comes first
            mark = tail.mark()
            window_start = time.monotonic()
            for _cycle in range(args.cycles):
                live.append(place_through_module_code(conn, [{"name": GUEST, "placement": "dedicated", "partition": "p1"}]))
                live.append(place_through_module_code(conn, [{"name": GUEST, "placement": "shared"}]))
            window_end = time.monotonic()
            testbed.wait_for_beats(GUEST, 2)
            time.sleep(2 * NOISE_MS / 1000.0)       # the lines that close the window's last interval
            live_gaps = tail.gaps_ms(mark)
            restarts_live = tail.restarts()
            detours = {name: {"quiet_us": t.largest_detour_us(quiet[0] + NOISE_MS / 1000.0, quiet[1]),
                              "changes_us": t.largest_detour_us(window_start, window_end)}
                       for name, t in tails.items()}
        for other in others_tails.values():
            other.stop()
            for _cycle in range(args.cycles):
                bare.append(bare_move(dom, {1}, {0}, ncpus))
                bare.append(bare_move(dom, {0}, {0}, ncpus))
        boots = set()
        for cycle in range(args.cold_cycles):
            dom, spent = cold_move(conn, dom, {1} if cycle % 2 == 0 else {0}, {0})
            cold.append(spent)
            boots.add(testbed.read_beats(GUEST)[-1]["boot"])
        restarts_cold = args.cold_cycles
        assert len(boots) == args.cold_cycles, "each cold move boots the guest afresh"
    finally:
        for name in [GUEST] + background:
            testbed.remove(conn, name)
        run_module("hpcvirt.regime.partition", {"state": "absent"})

    rows = [("live (module code path)", live), ("bare libvirt calls", bare), ("cold (destroy, redefine, start)", cold)]
    print("%-34s %6s %10s %10s %10s" % ("placement change", "n", "p50 ms", "p95 ms", "max ms"))
    for label, values in rows:
        figures = (label, len(values), statistics.median(values), percentile(values, 95), max(values))
        print("%-34s %6d %10.1f %10.1f %10.1f" % figures)
    print("heartbeat over %d live moves: max gap %.0f ms (interval %.0f ms), restarts %d"
          % (len(live), max(live_gaps), interval_ms, restarts_live))
    print()
    print("%-24s %-10s %18s %22s" % ("guest", "moved", "quiet: max detour", "during moves: max detour"))
    for name in [GUEST] + background:
        figures = detours[name]
        print("%-24s %-10s %15s us %19s us" % (name, "yes" if name == GUEST else "no (pool)",
                                               fmt_us(figures["quiet_us"]), fmt_us(figures["changes_us"])))
    result = {
        "moves": len(live),
        "live_ms_p50": round(statistics.median(live), 2),
        "live_ms_p95": round(percentile(live, 95), 2),
        "bare_ms_p50": round(statistics.median(bare), 2),
        "ratio_live_over_bare": round(statistics.median(live) / statistics.median(bare), 2),
        "heartbeat_gap_ms_max": round(max(live_gaps), 1),
        "heartbeat_interval_ms": interval_ms,
        "cold_ms_p50": round(statistics.median(cold), 1),
        "ratio_cold_over_live": round(statistics.median(cold) / statistics.median(live), 1),
        "guest_restarts_live": restarts_live,
        "guest_restarts_cold": restarts_cold,
        "guest_max_detour_us": {name: d["changes_us"] for name, d in detours.items()},
        "guest_quiet_max_detour_us": {name: d["quiet_us"] for name, d in detours.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
