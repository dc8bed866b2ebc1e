"""OS noise on a partition CPU under host load, before and after housekeeping confinement.

Run by hand (root, after `make setup`, on a quiet node):
    .venv/bin/python benchmarks/isolation.py [--seconds 10] [--smoke]

Carves partition p1 on CPU 1 (housekeeping CPU 0) through the partition module, then, through the
characterise module's own code path (plugins/module_utils/_characterise.py, minus Ansible), runs the
noise probe (tools/noise) natively on the partition CPU with one busy host task per online CPU
started as ordinary host tasks, first with the host unconfined, then confined to housekeeping
(plugins/module_utils/_confine.py), and puts everything back. ``--smoke`` (make test) measures 2 s
per cell under load only, and finishes well within a minute; its figures are printed, never
asserted. Prints a table, the ratio, then one JSON line.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, ".build", "collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

from ansible_collections.hpcvirt.regime.plugins.module_utils import _characterise
from ansible_collections.hpcvirt.regime.plugins.module_utils._node import NodeState  # noqa: E402
from conftest import run_module  # noqa: E402

PROBE_CANDIDATES = (os.environ.get("HPCVIRT_NOISE_BIN", ""), os.path.join(ROOT, ".build", "noise", "hpcvirt-noise"),
                    "/usr/local/libexec/hpcvirt-noise")


def runner(argv):
    import subprocess

    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="length of each cell (1-600)")
    parser.add_argument("--smoke", action="store_true", help="2 s per cell, under load only")
    args = parser.parse_args()
    probe = next((p for p in PROBE_CANDIDATES if p and os.access(p, os.X_OK)), None)
    if probe is None:
        sys.exit("no noise probe: run make noise")
    seconds = 2 if args.smoke else args.seconds
    loads = ["host"] if args.smoke else ["none", "host"]
    online = NodeState.read().online
    if len(online) < 2:
        sys.exit("needs at least two CPUs (housekeeping and a partition)")
    carve = run_module("hpcvirt.regime.partition", {"housekeeping": "0", "partitions": [{"name": "p1", "cpus": "1"}]})
    if carve.get("failed"):
        sys.exit("cannot carve partition p1: %s" % carve["msg"])
    try:
        layout = NodeState.read().record
        params = {"environment": "native", "target": "partition", "cpu": None, "guest": None, "label": None,
                  "loads": loads, "confinement": ["unconfined", "confined"], "seconds": seconds,
                  "interval_ms": 1000, "threshold_us": 2.0, "housekeeping": None, "probe": probe}
        request = _characterise.resolve(params, layout, online)
        cells, readbacks, _found, _interrupted = _characterise.measure(request, runner=runner, ncpus=len(online))
    finally:
        run_module("hpcvirt.regime.partition", {"state": "absent"})

    print(_characterise.render_report(cells, "this node (partition p1 = CPU %d, %d s per cell)" % (request["cpu"], seconds)))
    held = readbacks.get("confined", {})
    print("confinement held: %s; per-CPU kernel threads that cannot move: %d; tasks that escaped: %d"
          % (held.get("held"), len(held.get("cannot_move", [])), len(held.get("escaped", []))))
    by = {(c["load"], c["confinement"]): c for c in cells}
    before, after = by[("host", "unconfined")], by[("host", "confined")]

    def ratio(key):
        return round(before[key] / after[key], 2) if before.get(key) and after.get(key) else None

    result = {
        "cpu": request["cpu"], "seconds": seconds, "smoke": args.smoke,
        "load_unconfined_max_us": before["max_us"], "load_confined_max_us": after["max_us"],
        "load_unconfined_noise_ppm": before["noise_ppm"], "load_confined_noise_ppm": after["noise_ppm"],
        "ratio_max_us_unconfined_over_confined": ratio("max_us"),
        "ratio_noise_ppm_unconfined_over_confined": ratio("noise_ppm"),
        "confinement_held": held.get("held"),
    }
    print("under load: longest detour %s us -> %s us (x%s), noise %s ppm -> %s ppm (x%s)"
          % (before["max_us"], after["max_us"], result["ratio_max_us_unconfined_over_confined"],
             before["noise_ppm"], after["noise_ppm"], result["ratio_noise_ppm_unconfined_over_confined"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
