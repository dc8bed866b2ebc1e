"""Test bed for hpcvirt.regime: tiny real guests on a real libvirtd, and their heartbeats.

Used by the integration tests, the demo and the benchmarks (not by the collection itself). Guests
boot the tiny image of tools/guest (Debian cloud kernel + busybox initramfs) from a copy-on-write
overlay of its master disk, with domain type ``qemu`` (TCG) by default, and print a heartbeat
line to a serial console file::

    hpcvirt-hb seq=<n> up=<seconds> boot=<id> host=<hostname> src=<disk|initrd>

``HeartbeatTail`` follows that file and stamps each line with the host's monotonic clock, so a
pause of the guest shows as a gap even though the guest's own clock may not see it.

Command line::

    testbed.py boot NAME [--vcpus N] [--memory MIB]   define, start, wait for the first beat
    testbed.py remove NAME                             destroy, undefine, delete overlay and log
    testbed.py beats NAME                              print the last heartbeat line
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import threading
import time

import libvirt

IMAGE_DIR = os.environ.get("HPCVIRT_IMAGE_DIR", "/var/lib/hpcvirt/images")
INSTANCE_DIR = os.environ.get("HPCVIRT_TESTBED_DIR", "/var/lib/hpcvirt/testbed")
CONSOLE_DIR = os.path.join(INSTANCE_DIR, "console")
POOL_NAME = "hpcvirt-testbed"
DOMAIN_TYPE = os.environ.get("HPCVIRT_DOMAIN_TYPE", "qemu")
URI = os.environ.get("HPCVIRT_URI", "qemu:///system")

HEARTBEAT = re.compile(r"hpcvirt-hb seq=(\d+) up=([\d.]+) boot=(\w+) host=(\S*) src=(\w+)")


def _load_noise_parser():
    # The collection's own parser of the noise probe's line (pure, imports nothing of Ansible).
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "plugins", "module_utils", "_noise.py")
    spec = importlib.util.spec_from_file_location("hpcvirt_noise", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


noise = _load_noise_parser()


def _quiet(_ctx, _err):
    return None


libvirt.registerErrorHandler(_quiet, None)


def connect(uri=URI):
    return libvirt.open(uri)


def console_path(name):
    return os.path.join(CONSOLE_DIR, name + ".log")


def ensure_pool(conn, path=INSTANCE_DIR, name=POOL_NAME):
    """A directory storage pool for overlays, defined, built and active."""
    os.makedirs(path, exist_ok=True)
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        pool = conn.storagePoolDefineXML(
            "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, path), 0)
    if not pool.isActive():
        pool.create(0)
    pool.refresh(0)
    return pool


def create_overlay(conn, name, master=None):
    master = master or os.path.join(IMAGE_DIR, "hpcvirt-tiny.qcow2")
    pool = ensure_pool(conn)
    volname = name + ".qcow2"
    try:
        pool.storageVolLookupByName(volname).delete(0)
    except libvirt.libvirtError:
        pass
    xml = """<volume><name>%s</name><capacity unit='M'>64</capacity>
  <target><format type='qcow2'/></target>
  <backingStore><path>%s</path><format type='qcow2'/></backingStore></volume>""" % (volname, master)
    return pool.createXML(xml, 0).path()


def noise_args(noise_ms=None, noise_duty=None, noise_us=None):
    """Kernel arguments for the guest's noise probe (docs/guest-image.md); None keeps a default."""
    args = []
    for key, value in (("noise_ms", noise_ms), ("noise_duty", noise_duty), ("noise_us", noise_us)):
        if value is not None:
            args.append("hpcvirt.%s=%d" % (key, int(value)))
    return " ".join(args)


def guest_xml(name, disk, vcpus=1, memory_mib=128, domain_type=DOMAIN_TYPE, hb_ms=100, extra_devices="",
              cmdline_extra=""):
    return """<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu placement='static'>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{images}/hpcvirt-tiny.vmlinuz</kernel>
    <initrd>{images}/hpcvirt-tiny.initrd</initrd>
    <cmdline>console=ttyS0 quiet hpcvirt.hostname={name} hpcvirt.hb_ms={hb}{extra_cmdline}</cmdline>
  </os>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='{log}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{log}' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
    {extra}
  </devices>
</domain>""".format(type=domain_type, name=name, mem=memory_mib, vcpus=vcpus, images=IMAGE_DIR,
                    disk=disk, log=console_path(name), hb=hb_ms, extra=extra_devices,
                    extra_cmdline=(" " + cmdline_extra) if cmdline_extra else "")


def boot(conn, name, vcpus=1, memory_mib=128, wait=True, timeout=60, hb_ms=100, noise_duty=None, noise_ms=None):
    """Define and start a guest; with ``wait``, return once it has printed a heartbeat.

    ``noise_duty`` (percent, 100 = the probe spins all the time) and ``noise_ms`` (its report
    interval) set the guest's noise probe; by default it spins 5% of each second.
    """
    remove(conn, name)
    os.makedirs(CONSOLE_DIR, exist_ok=True)
    disk = create_overlay(conn, name)
    dom = conn.defineXML(guest_xml(name, disk, vcpus=vcpus, memory_mib=memory_mib, hb_ms=hb_ms,
                                   cmdline_extra=noise_args(noise_ms=noise_ms, noise_duty=noise_duty)))
    dom.create()
    if wait:
        wait_for_beats(name, 1, timeout)
    return dom


def remove(conn, name):
    """Destroy and undefine ``name`` if it exists, delete its overlay and console log."""
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        dom = None
    if dom is not None:
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            dom.undefineFlags(flags)
    try:
        pool = conn.storagePoolLookupByName(POOL_NAME)
        pool.refresh(0)
        pool.storageVolLookupByName(name + ".qcow2").delete(0)
    except libvirt.libvirtError:
        pass
    if os.path.exists(console_path(name)):
        os.unlink(console_path(name))


def remove_empty_pool(conn, pool_name, directory=None):
    """Remove a storage pool a test made, once it holds no volume, and its empty directory."""
    try:
        pool = conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        if not pool.listVolumes():
            pool.destroy()
            pool.undefine()
    except libvirt.libvirtError:
        pass
    if directory and os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)


def domain_console_path(dom):
    """The file a guest's serial console writes to, from its domain XML (None without one)."""
    match = re.search(r"<serial type='file'>\s*<source path='([^']+)'", dom.XMLDesc(0))
    return match.group(1) if match else None


def parse_beats(text):
    """Heartbeats in console text as dicts (seq, up, boot, host, src)."""
    beats = []
    for match in HEARTBEAT.finditer(text):
        beats.append({"seq": int(match.group(1)), "up": float(match.group(2)), "boot": match.group(3),
                      "host": match.group(4), "src": match.group(5)})
    return beats


def read_beats(name):
    try:
        with open(console_path(name), "r", errors="replace") as handle:
            return parse_beats(handle.read())
    except FileNotFoundError:
        return []


def wait_for_beats(name, count, timeout=60):
    """Wait until the guest has printed ``count`` more heartbeats than now; return the last."""
    start = len(read_beats(name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = read_beats(name)
        if len(beats) >= start + count:
            return beats[-1]
        time.sleep(0.05)
    raise TimeoutError("guest %s printed no heartbeat within %ss (console %s)" % (name, timeout, console_path(name)))


class HeartbeatTail:
    """Follows a guest's console file in a thread, stamping each heartbeat with host time.

    ``gaps_ms()`` are the host-side intervals between consecutive beats; ``restarts()`` counts
    changes of boot id or a sequence that went backwards. Noise probe lines are kept too
    (``noise``, stamped the same way): ``largest_detour_us(start, end)`` is the guest's largest
    detour in a window of host time.
    """

    def __init__(self, name, poll_s=0.005, path=None):
        self.name = name
        self.path = path or console_path(name)
        self.poll_s = poll_s
        self.beats = []          # (host_monotonic, beat dict)
        self.noise = []          # (host_monotonic, noise record), see plugins/module_utils/_noise.py
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self):
        offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        pending = ""
        while not self._stop.is_set():
            try:
                with open(self.path, "r", errors="replace") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
            except FileNotFoundError:
                chunk = ""
            if chunk:
                now = time.monotonic()
                pending += chunk
                lines = pending.split("\n")
                pending = lines.pop()
                for line in lines:
                    for beat in parse_beats(line):
                        self.beats.append((now, beat))
                    record = noise.parse_line(line)
                    if record is not None:
                        self.noise.append((now, record))
            self._stop.wait(self.poll_s)

    def mark(self):
        return len(self.beats)

    def gaps_ms(self, since=0):
        stamps = [stamp for stamp, _beat in self.beats[max(since - 1, 0):]]
        return [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]

    def restarts(self):
        count = 0
        for (_t1, before), (_t2, after) in zip(self.beats, self.beats[1:]):
            if after["boot"] != before["boot"] or after["seq"] < before["seq"]:
                count += 1
        return count

    def last(self):
        return self.beats[-1][1] if self.beats else None

    def noise_in(self, start, end=None):
        """Noise records of the intervals that overlap [start, end] (host ``time.monotonic()``).

        A line is printed at the end of its interval, so the lines stamped from ``start`` up to one
        interval after ``end`` cover the window (the interval is the lines' usual spacing). Wait
        about one noise interval after ``end`` before asking.
        """
        end = time.monotonic() if end is None else end
        stamps = [stamp for stamp, _record in self.noise]
        spacings = sorted(b - a for a, b in zip(stamps, stamps[1:]) if b > a)
        spacing = spacings[len(spacings) // 2] if spacings else 1.0
        return [record for stamp, record in self.noise if start <= stamp <= end + spacing]

    def largest_detour_us(self, start, end=None):
        """The guest's largest detour (microseconds) in [start, end], None when it printed no
        noise line then (probe off, or the window has not been reported yet)."""
        records = self.noise_in(start, end)
        return max(record["max_us"] for record in records) if records else None


def largest_detour_us(path, start_offset, end_offset=None):
    """A guest's largest detour (microseconds) from its console log, between two byte offsets
    (``os.path.getsize`` of the log before and after a change; the noise line that closes the
    interval of the change comes up to one interval after it). None when there is no line."""
    with open(path, "r", errors="replace") as handle:
        handle.seek(start_offset)
        text = handle.read() if end_offset is None else handle.read(max(end_offset - start_offset, 0))
    records = noise.parse(text)
    return max(record["max_us"] for record in records) if records else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_boot = sub.add_parser("boot")
    p_boot.add_argument("name")
    p_boot.add_argument("--vcpus", type=int, default=1)
    p_boot.add_argument("--memory", type=int, default=128, help="MiB")
    p_remove = sub.add_parser("remove")
    p_remove.add_argument("name")
    p_beats = sub.add_parser("beats")
    p_beats.add_argument("name")
    args = parser.parse_args(argv)

    conn = connect()
    if args.command == "boot":
        started = time.monotonic()
        boot(conn, args.name, vcpus=args.vcpus, memory_mib=args.memory)
        beat = read_beats(args.name)[-1]
        print("%s: running, first heartbeat after %.1f s: seq=%d up=%.2f src=%s"
              % (args.name, time.monotonic() - started, beat["seq"], beat["up"], beat["src"]))
    elif args.command == "remove":
        remove(conn, args.name)
        print("%s: removed" % args.name)
    elif args.command == "beats":
        beats = read_beats(args.name)
        if not beats:
            print("%s: no heartbeat yet" % args.name)
            return 1
        print(beats[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
