#!/bin/sh
# hpcvirt heartbeat workload. Prints one line per interval to the serial console:
#   hpcvirt-hb seq=<n> up=<seconds> boot=<id> host=<hostname> src=<disk|initrd>
# seq counts from 0 and only ever increases while the guest lives; boot is the first 8 characters
# of the kernel's boot_id, so a changed value means the guest restarted. Interval: kernel argument
# hpcvirt.hb_ms (default 100). docs/guest-image.md documents the format; keep it stable.
ms=100
read -r cmdline < /proc/cmdline
for w in $cmdline; do
  case "$w" in hpcvirt.hb_ms=*) ms="${w#*=}" ;; esac
done
boot=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
host=$(hostname)
src=${HPCVIRT_SOURCE:-initrd}
seq=0
while :; do
  read -r up _ < /proc/uptime
  echo "hpcvirt-hb seq=$seq up=$up boot=$boot host=$host src=$src"
  seq=$((seq + 1))
  usleep $((ms * 1000))
done
