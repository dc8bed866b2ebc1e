"""`make demo`: the main job on the embedded default, with the guests' heartbeats watched.

Runs the collection's own playbooks on inventories/local: provision two guests from one master
image through three layers, move the node time_shared -> space_shared -> time_shared with
playbooks/reconfigure.yml, and print the node summary. While the node changes regime, each
guest's serial console is followed on the host; after each transition the demo prints its
timings and every guest's largest heartbeat gap and restart count. Its last step writes the core
map (playbooks/report.yml, with the last transition and the heartbeat gaps) and prints where the
page is.
"""

import json
import os
import re
import subprocess
import sys
import time

import testbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = ["hpcvirt-vse-demo-1", "hpcvirt-vse-demo-2"]
REPORT_DIR = os.environ.get("HPCVIRT_REPORT_DIR", os.path.join(ROOT, ".build", "report"))


def playbook(*args, output=None):
    """Run a playbook, its output shown as it goes; return whether it succeeded."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    proc = subprocess.Popen(["ansible-playbook"] + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        print(line, end="", flush=True)
        if output is not None:
            output.append(line)
    return proc.wait() == 0


def heartbeat_interval_ms(dom):
    match = re.search(r"hpcvirt\.hb_ms=(\d+)", dom.XMLDesc(0))
    return int(match.group(1)) if match else 100


def wait_until_beating(tails, count=2, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(tail.beats) >= count for tail in tails.values()):
            return True
        time.sleep(0.1)
    return False


def transition(regime, tails, intervals):
    marks = {name: tail.mark() for name, tail in tails.items()}
    started = time.monotonic()
    ok = playbook("playbooks/reconfigure.yml", "-e", "regime=%s" % regime, "-e", "report_dir=%s" % REPORT_DIR,
                  "-e", "regime_progress_interval=1")
    wall_ms = (time.monotonic() - started) * 1000
    time.sleep(2.0)            # let every guest beat again after the change
    print("=== transition to %s: %s in %.0f ms (playbook wall time)"
          % (regime, "done" if ok else "FAILED", wall_ms))
    for name, tail in tails.items():
        gaps = tail.gaps_ms(marks[name])
        last = tail.last()
        print("    %-22s largest heartbeat gap %6.0f ms (beats every %d ms) over %3d beats, restarts %d, "
              "last seq %s" % (name, max(gaps) if gaps else 0.0, intervals[name], len(gaps), tail.restarts(),
                               last["seq"] if last else "-"))
    return ok


def main():
    if not playbook("playbooks/provision.yml"):
        return 1
    conn = testbed.connect()
    tails, intervals = {}, {}
    for name in GUESTS:
        dom = conn.lookupByName(name)
        intervals[name] = heartbeat_interval_ms(dom)
        tails[name] = testbed.HeartbeatTail(name, path=testbed.domain_console_path(dom)).start()
    try:
        if not wait_until_beating(tails):
            print("the demo guests do not beat; see their console logs", file=sys.stderr)
            return 1
        ok = transition("space_shared", tails, intervals) and playbook("playbooks/status.yml")
        ok = transition("time_shared", tails, intervals) and ok
    finally:
        for tail in tails.values():
            tail.stop()
    summary = {name: {"restarts": tail.restarts(), "beats": len(tail.beats),
                      "max_gap_ms": round(max(tail.gaps_ms()), 1) if tail.gaps_ms() else None}
               for name, tail in tails.items()}
    print("=== heartbeats over the whole demo: %s" % json.dumps(summary))
    ok = ok and playbook("playbooks/status.yml")
    # A small fleet (20 defined, 4 started) from the same master image, then removed again.
    ok = ok and playbook("playbooks/fleet-demo.yml", "-e", "vse_progress_interval=1")
    # Last: the core map, with the last transition (kept by the regime role in REPORT_DIR) and the
    # heartbeat gaps measured here.
    os.makedirs(REPORT_DIR, exist_ok=True)
    beats = os.path.join(REPORT_DIR, "heartbeats.json")
    with open(beats, "w") as handle:
        json.dump({"report_heartbeats": summary}, handle)
    lines = []
    ok = playbook("playbooks/report.yml", "-e", "report_dir=%s" % REPORT_DIR, "-e", "@" + beats, output=lines) and ok
    where = re.findall(r"The core map is in (\S+\.html)\s+\(data:\s+(\S+\.json)\)", "".join(lines))
    if where:
        print("=== the core map of this node: %s (open it in a browser); its data: %s" % where[-1])
    return 0 if ok and where else 1


if __name__ == "__main__":
    sys.exit(main())
