#!/usr/bin/env bash
# Make sure virtlogd and libvirtd run: through systemd where it is PID 1, by hand otherwise.
set -euo pipefail
if [[ $(cat /proc/1/comm 2>/dev/null) == systemd ]]; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 1 60); do
  if /usr/bin/python3 -c 'import libvirt, sys; libvirt.registerErrorHandler(lambda c, e: None, None); libvirt.open("qemu:///system").close()' 2>/dev/null; then
    echo "start-libvirt: libvirtd answers on qemu:///system"
    exit 0
  fi
  sleep 0.5
done
echo "start-libvirt: libvirtd does not answer on qemu:///system" >&2
exit 1
