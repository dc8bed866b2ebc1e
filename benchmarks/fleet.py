"""Benchmark: 200 guests defined with copy-on-write overlays of one master image (not started), three ways.

1. **fleet**: one ``hpcvirt.regime.fleet`` task (ansible-playbook, end to end).
2. **anchor**: how community.libvirt users do it today: one ``ansible.builtin.command``
   ``qemu-img create`` task per overlay and one ``community.libvirt.virt`` ``command: define`` task
   per guest, each a loop over the guests (the ``ansible`` package's ansible-playbook, from a venv
   of its own under .build/bench-venv, made here if missing).
3. **limit**: a bare libvirt-python loop (``pool.createXML`` + ``defineXML`` per guest, nothing else).

Every guest and overlay is removed after each of the three runs. Prints a table, then one JSON line:

    {"members": 200, "fleet_s": ..., "anchor_s": ..., "limit_s": ..., "ratio_anchor_over_fleet": ...,
     "ratio_fleet_over_limit": ...}

Run as root, under the node lock: ``flock /tmp/hpcvirt-node.lock .venv/bin/python benchmarks/fleet.py
[--members N | --smoke]``. ``--smoke`` (what ``make test`` runs) uses 10 members and finishes in
well under a minute; it runs the anchor only when its venv exists already (making it downloads
the ``ansible`` package), and reports it as skipped otherwise. Nothing is asserted on time.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

import importlib.util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tests/conftest.py makes ansible_collections.hpcvirt.regime importable (and tools/ with testbed);
# tests/integration/conftest.py's ansible_env runs the playbooks.
_load("hpcvirt_tests_conftest", os.path.join(ROOT, "tests", "conftest.py"))
conftest = _load("hpcvirt_integration_conftest", os.path.join(ROOT, "tests", "integration", "conftest.py"))

import libvirt  # noqa: E402

from ansible_collections.hpcvirt.regime.plugins.module_utils import _storage as storage  # noqa: E402

PREFIX = "hpcvirt-fleet-bench"
POOL = "hpcvirt-fleet-bench"
POOL_DIR = "/var/lib/hpcvirt/fleet-bench"
IMAGES = os.environ.get("HPCVIRT_IMAGE_DIR", "/var/lib/hpcvirt/images")
MASTER = IMAGES + "/hpcvirt-tiny.qcow2"
KERNEL = IMAGES + "/hpcvirt-tiny.vmlinuz"
INITRD = IMAGES + "/hpcvirt-tiny.initrd"
WORK = os.path.join(ROOT, ".build", "bench-fleet")
BENCH_VENV = os.path.join(ROOT, ".build", "bench-venv")

GUEST_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet hpcvirt.hostname={name}</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='file'><source path='/var/lib/hpcvirt/console/{name}.log' append='on'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def names(count):
    return ["%s-%03d" % (PREFIX, index) for index in range(1, count + 1)]


def overlay(name):
    return os.path.join(POOL_DIR, "%s-vda.qcow2" % name)


def cleanup(conn):
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(PREFIX + "-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for path in glob.glob(os.path.join(POOL_DIR, PREFIX + "-*")):
        os.unlink(path)
    pool = storage.find_pool_by_path(conn, POOL_DIR)
    if pool is not None and pool.isActive():
        pool.refresh(0)


def count_left(conn):
    return (len([d for d in conn.listAllDomains(0) if d.name().startswith(PREFIX + "-")]),
            len(glob.glob(os.path.join(POOL_DIR, PREFIX + "-*"))))


def playbook(path, plays):
    with open(path, "w") as handle:
        json.dump(plays, handle, indent=1)
    return path


def run_fleet(count):
    vse = {"domain_type": "qemu", "memory": 128, "vcpus": 1,
           "boot": {"kernel": KERNEL, "initrd": INITRD, "cmdline": "console=ttyS0 quiet hpcvirt.hostname={hostname}"},
           "disks": [{"dev": "vda", "master": MASTER, "pool": POOL, "pool_dir": POOL_DIR}],
           "networks": [{"name": "net0", "type": "user"}]}
    fleet = {"name": PREFIX, "pattern": "%s-[001:%03d]" % (PREFIX, count), "batch_size": 50, "vse": vse}
    timings = {"content": "{{ result.timings | to_json }}", "dest": os.path.join(WORK, "fleet-timings.json")}
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": "/usr/bin/python3"},
             "tasks": [{"name": "Fleet", "register": "result", "hpcvirt.regime.fleet": fleet},
                       {"name": "Timings", "ansible.builtin.copy": timings}]}]
    path = playbook(os.path.join(WORK, "fleet.yml"), play)
    start = time.monotonic()
    proc = subprocess.run(["ansible-playbook", path, "-i", "localhost,"], env=conftest.ansible_env(), cwd=ROOT,
                          capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("fleet run failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-3000:]))
    with open(os.path.join(WORK, "fleet-timings.json")) as handle:
        print("fleet module timings (ms):", handle.read().strip())
    return elapsed


def ensure_bench_venv():
    if not os.path.exists(os.path.join(BENCH_VENV, "bin", "ansible-playbook")):
        subprocess.run([sys.executable, "-m", "venv", BENCH_VENV], check=True)
        subprocess.run([os.path.join(BENCH_VENV, "bin", "pip"), "install", "-q", "ansible"], check=True)
    return os.path.join(BENCH_VENV, "bin", "ansible-playbook")


def run_anchor(count):
    ansible_playbook = ensure_bench_venv()
    template = os.path.join(WORK, "guest.xml.j2")
    with open(template, "w") as handle:
        handle.write(GUEST_XML.replace("{name}", "{{ item }}").replace("{kernel}", KERNEL)
                     .replace("{initrd}", INITRD).replace("{disk}", POOL_DIR + "/{{ item }}-vda.qcow2"))
    play = [{"hosts": "localhost", "gather_facts": False, "connection": "local",
             "vars": {"ansible_python_interpreter": "/usr/bin/python3", "guests": names(count)},
             "tasks": [
                 {"name": "Create each overlay", "loop": "{{ guests }}",
                  "ansible.builtin.command": {
                      "argv": ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", MASTER,
                               POOL_DIR + "/{{ item }}-vda.qcow2"],
                      "creates": POOL_DIR + "/{{ item }}-vda.qcow2"}},
                 {"name": "Define each guest", "loop": "{{ guests }}",
                  "community.libvirt.virt": {"command": "define", "xml": "{{ lookup('ansible.builtin.template', '%s') }}" % template}},
             ]}]
    path = playbook(os.path.join(WORK, "anchor.yml"), play)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_NOCOLOR"] = "1"
    start = time.monotonic()
    proc = subprocess.run([ansible_playbook, path, "-i", "localhost,"], env=env, cwd=WORK,
                          capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit("anchor run failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-3000:]))
    return elapsed


def run_limit(conn, count):
    start = time.monotonic()
    pool = storage.ensure_pool(conn, POOL_DIR, POOL)[0]
    capacity = storage.image_size(MASTER)
    for name in names(count):
        pool.createXML(storage.overlay_xml(os.path.basename(overlay(name)), capacity, MASTER, "qcow2"), 0)
        conn.defineXML(GUEST_XML.format(name=name, kernel=KERNEL, initrd=INITRD, disk=overlay(name)))
    return time.monotonic() - start


def table(rows):
    """Aligned plain-text table of (way, seconds, domains, overlays) rows."""
    lines = ["%-7s %9s %8s %9s" % ("way", "seconds", "domains", "overlays")]
    for label, seconds, made in rows:
        if seconds is None:
            lines.append("%-7s %9s %8s %9s" % (label, "skipped", "-", "-"))
        else:
            lines.append("%-7s %9.2f %8d %9d" % (label, seconds, made[0], made[1]))
    return "\n".join(lines)


def ratio(numerator, denominator, digits):
    if numerator is None or denominator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="10 members, under a minute (make test)")
    args = parser.parse_args()
    members = 10 if args.smoke else args.members
    if not 1 <= members <= 999:
        raise SystemExit("--members: %d is outside 1..999" % members)
    anchor_ready = os.path.exists(os.path.join(BENCH_VENV, "bin", "ansible-playbook"))
    os.makedirs(WORK, exist_ok=True)
    conn = libvirt.open("qemu:///system")
    cleanup(conn)
    results, rows = {}, []
    ways = [("fleet", lambda: run_fleet(members)), ("anchor", lambda: run_anchor(members)),
            ("limit", lambda: run_limit(conn, members))]
    try:
        for label, run in ways:
            if label == "anchor" and args.smoke and not anchor_ready:
                print("anchor skipped: its venv (%s) is not made; a full run makes it" % BENCH_VENV)
                results[label] = None
                rows.append((label, None, None))
                continue
            results[label] = run()
            made = count_left(conn)
            rows.append((label, results[label], made))
            if made != (members, members):
                raise SystemExit("%s made %s, expected %d domains and overlays" % (label, made, members))
            cleanup(conn)
            if count_left(conn) != (0, 0):
                raise SystemExit("cleanup after %s left %s" % (label, count_left(conn)))
    finally:
        cleanup(conn)
        pool = storage.find_pool_by_path(conn, POOL_DIR)
        if pool is not None:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
        if os.path.isdir(POOL_DIR) and not os.listdir(POOL_DIR):
            os.rmdir(POOL_DIR)
        conn.close()
    print(table(rows))
    rounded = {label: (round(value, 2) if value is not None else None) for label, value in results.items()}
    print(json.dumps({
        "members": members,
        "smoke": args.smoke,
        "fleet_s": rounded["fleet"],
        "anchor_s": rounded["anchor"],
        "limit_s": rounded["limit"],
        "ratio_anchor_over_fleet": ratio(results["anchor"], results["fleet"], 1),
        "ratio_fleet_over_limit": ratio(results["fleet"], results["limit"], 2),
    }))


if __name__ == "__main__":
    main()
