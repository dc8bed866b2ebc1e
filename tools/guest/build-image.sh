#!/usr/bin/env bash
# Build the tiny real guest used by the demo, the tests and the benchmarks, from Debian packages:
#   <dir>/hpcvirt-tiny.vmlinuz   Debian cloud kernel (linux-image-cloud-amd64)
#   <dir>/hpcvirt-tiny.initrd    busybox initramfs with the virtio modules and the heartbeat init
#   <dir>/hpcvirt-tiny.qcow2     master disk image (ext4) carrying the workload and the noise probe;
#                                guests boot from a copy-on-write overlay of it
# The result is cached: a second run with the same inputs (these scripts, the init, the workload
# and the noise probe's source) does nothing; a change to any of them rebuilds the image.
set -euo pipefail

dir=${1:-/var/lib/hpcvirt/images}
here=$(cd "$(dirname "$0")" && pwd)
probe_src=$here/../noise/hpcvirt-noise.c
stamp_input=$(cat "$here/build-image.sh" "$here/init" "$here/workload.sh" "$probe_src" | sha256sum | cut -c1-16)

if [[ -f $dir/.stamp && $(cat "$dir/.stamp") == "$stamp_input" && -f $dir/hpcvirt-tiny.qcow2 ]]; then
  echo "guest image: cached in $dir"
  exit 0
fi

for tool in busybox cpio mkfs.ext4 qemu-img dpkg-deb apt-get gcc; do
  command -v "$tool" >/dev/null || { echo "guest image: '$tool' is missing (run scripts/setup-host.sh)" >&2; exit 1; }
done
[[ -x /bin/busybox ]] && file_bb=/bin/busybox || file_bb=$(command -v busybox)
# The static build is needed: the initramfs has no libc.
if [[ $(ldd "$file_bb" 2>&1 || true) != *"not a dynamic"* ]]; then
  echo "guest image: $file_bb is dynamically linked; install busybox-static" >&2; exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cd "$work"

# The noise probe, static: the initramfs has no libc.
gcc -static -s -O2 -Wall -o hpcvirt-noise "$probe_src"

# Kernel: the metapackage names the versioned image package it depends on.
apt-get download -q linux-image-cloud-amd64 >/dev/null 2>&1
meta=$(ls linux-image-cloud-amd64_*.deb)
kpkg=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ (]*\).*/\1/p' | head -1)
apt-get download -q "$kpkg" >/dev/null 2>&1
dpkg-deb -x "$kpkg"_*.deb kernel
kver=$(ls kernel/lib/modules)

# initramfs: busybox, the virtio modules in dependency order, the init script.
root=initramfs
mkdir -p $root/{bin,sbin,etc,proc,sys,dev,mnt,tmp,run,lib/modules}
cp "$file_bb" $root/bin/busybox
ln -s busybox $root/bin/sh
mods=kernel/lib/modules/$kver
order=()
module_path() { find "$mods" -name "$1.ko" -o -name "$(echo "$1" | tr _ -).ko" | head -1; }
add_module() {   # depth-first over each module's own depends= so dependencies load first
  local path dep
  path=$(module_path "$1")
  [[ -n $path ]] || return 0          # built into the kernel
  for dep in $(tr '\0' '\n' < "$path" | sed -n 's/^depends=//p' | tr ',' ' '); do add_module "$dep"; done
  [[ " ${order[*]-} " == *" $path "* ]] || order+=("$path")
}
for name in virtio_pci virtio_blk virtio_net virtio_console; do add_module "$name"; done
: > $root/etc/modules.order
for path in "${order[@]}"; do
  cp "$path" "$root/lib/modules/"
  basename "$path" >> $root/etc/modules.order
done
install -m 0755 "$here/init" $root/init
install -m 0755 "$here/workload.sh" $root/bin/hpcvirt-workload
install -m 0755 hpcvirt-noise $root/bin/hpcvirt-noise
echo "$kver" > $root/etc/kernel-release
(cd $root && find . | cpio -o -H newc --quiet | gzip -9) > initrd.img

# Master disk: ext4 with the workload, created without mounting (mkfs -d).
mkdir -p disk/hpcvirt
install -m 0755 "$here/workload.sh" disk/hpcvirt/workload
install -m 0755 hpcvirt-noise disk/hpcvirt/hpcvirt-noise
echo "hpcvirt-tiny master image, kernel $kver" > disk/hpcvirt/release
mkfs.ext4 -q -F -L hpcvirt-tiny -d disk master.raw 64M
qemu-img convert -q -f raw -O qcow2 master.raw master.qcow2

install -d -m 0755 "$dir"
install -m 0644 "kernel/boot/vmlinuz-$kver" "$dir/hpcvirt-tiny.vmlinuz"
install -m 0644 initrd.img "$dir/hpcvirt-tiny.initrd"
install -m 0644 master.qcow2 "$dir/hpcvirt-tiny.qcow2"
echo "$stamp_input" > "$dir/.stamp"
echo "guest image: built in $dir (kernel $kver, initrd $(du -h initrd.img | cut -f1))"
