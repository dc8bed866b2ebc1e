#!/usr/bin/env bash
# Record the sysfs/procfs files hpcvirt reads into one text file, for unit tests:
#   tools/record-sysfs.sh > tests/unit/fixtures/sysfs/<name>.txt
# Format: "==> /path <==" then the file's content (as `head` prints several files).
set -u
shopt -s nullglob
files=(
  /sys/devices/system/cpu/{online,possible,present,isolated,nohz_full}
  /sys/devices/system/cpu/cpu[0-9]*/topology/{core_id,physical_package_id,thread_siblings_list}
  /sys/devices/system/node/online
  /sys/devices/system/node/node[0-9]*/{cpulist,meminfo}
  /sys/devices/system/node/node[0-9]*/hugepages/hugepages-*/{nr,free,surplus}_hugepages
  /sys/kernel/mm/hugepages/hugepages-*/{nr,free,resv,surplus}_hugepages
  /proc/cmdline /proc/meminfo /proc/1/comm
)
for f in "${files[@]}"; do
  [[ -r $f ]] || continue
  printf '==> %s <==\n' "$f"
  cat "$f"
done
# Only the cgroup mounts of mountinfo matter; the rest names this machine's disks.
printf '==> /proc/self/mountinfo <==\n'
grep -E ' - cgroup2? ' /proc/self/mountinfo
