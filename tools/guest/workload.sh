#!/bin/sh
# hpcvirt heartbeat workload. Prints one line per interval to the serial console:
#   hpcvirt-hb seq=<n> up=<seconds> boot=<id> host=<hostname> src=<disk|initrd>
# seq counts from 0 and only ever increases while the guest lives; boot is the first 8 characters
# of the kernel's boot_id, so a changed value means the guest restarted. Interval: kernel argument
# hpcvirt.hb_ms (default 100). docs/guest-image.md documents the format; keep it stable.
#
# Beside it, the noise probe (tools/noise, installed next to this script as hpcvirt-noise) prints
# one line per noise interval, and prints the heartbeat itself (same format) outside its spin:
#   hpcvirt-noise seq=<n> cpu=<c> span_us=<us> count=<n> total_us=<us> max_us=<us> thr_us=<us>
# Kernel arguments: hpcvirt.noise_ms (report interval, default 1000, 0 = no probe),
# hpcvirt.noise_duty (percent of each interval spent spinning, default 5, 100 = always),
# hpcvirt.noise_us (detour threshold in microseconds, default 2).
ms=100
noise_ms=1000
duty=5
thr=2
read -r cmdline < /proc/cmdline
for w in $cmdline; do
  case "$w" in
    hpcvirt.hb_ms=*) ms="${w#*=}" ;;
    hpcvirt.noise_ms=*) noise_ms="${w#*=}" ;;
    hpcvirt.noise_duty=*) duty="${w#*=}" ;;
    hpcvirt.noise_us=*) thr="${w#*=}" ;;
  esac
done
int_in() {  # int_in VALUE LOW HIGH: VALUE is a decimal integer within [LOW, HIGH]
  case "$1" in ''|*[!0-9]*) return 1 ;; esac
  [ ${#1} -le 7 ] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]
}
int_in "$ms" 10 60000 || ms=100
probe="${0%/*}/hpcvirt-noise"
if [ -x "$probe" ] && [ "$noise_ms" != 0 ] && int_in "$noise_ms" 10 60000 && int_in "$duty" 1 100 \
   && int_in "$thr" 1 1000000; then
  exec "$probe" -d 0 -b "$ms" -i "$noise_ms" -u "$duty" -t "$thr"
fi
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
