"""`make demo`: the main job on the embedded default, with the guests' heartbeats watched.

Runs the collection's own playbooks on inventories/local: provision two guests from one master
image through three layers, move the node time_shared -> space_shared -> time_shared with
playbooks/reconfigure.yml, and print the node summary. While the node changes regime, each
guest's serial console is followed on the host; after each transition the demo prints its
timings and every guest's largest heartbeat gap and restart count.
"""

import json
import os
import subprocess
import sys
import time

import testbed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = ["hpcvirt-vse-demo-1", "hpcvirt-vse-demo-2"]


def playbook(*args):
    """Run a playbook; return (ok, the regime role's result per host if it reported one)."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(["ansible-playbook"] + list(args), cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    print(proc.stdout[-6000:])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode == 0


def transition(regime, tails):
    marks = {name: tail.mark() for name, tail in tails.items()}
    started = time.monotonic()
    ok = playbook("playbooks/reconfigure.yml", "-e", "regime=%s" % regime)
    wall_ms = (time.monotonic() - started) * 1000
    time.sleep(1.0)            # let every guest beat again after the change
    print("=== time_shared/space_shared transition to %s: %s in %.0f ms (playbook wall time)"
          % (regime, "done" if ok else "FAILED", wall_ms))
    for name, tail in tails.items():
        gaps = tail.gaps_ms(marks[name])
        last = tail.last()
        print("    %-22s heartbeat gap max %7.0f ms over %3d beats, restarts %d, last seq %s"
              % (name, max(gaps) if gaps else 0.0, len(gaps), tail.restarts(), last["seq"] if last else "-"))
    return ok


def main():
    if not playbook("playbooks/provision.yml"):
        return 1
    conn = testbed.connect()
    tails = {}
    for name in GUESTS:
        path = testbed.domain_console_path(conn.lookupByName(name))
        tails[name] = testbed.HeartbeatTail(name, path=path).start()
    time.sleep(0.5)
    try:
        ok = transition("space_shared", tails) and playbook("playbooks/status.yml")
        ok = transition("time_shared", tails) and ok
    finally:
        for tail in tails.values():
            tail.stop()
    summary = {name: {"restarts": tail.restarts(), "beats": len(tail.beats),
                      "max_gap_ms": round(max(tail.gaps_ms()), 1) if tail.gaps_ms() else None}
               for name, tail in tails.items()}
    print("=== heartbeats over the whole demo: %s" % json.dumps(summary))
    ok = ok and playbook("playbooks/status.yml")
    # A small fleet (20 defined, 4 started) from the same master image, then removed again.
    return 0 if ok and playbook("playbooks/fleet-demo.yml") else 1


if __name__ == "__main__":
    sys.exit(main())
