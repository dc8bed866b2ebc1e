#!/usr/bin/env bash
# The production-like test node: a QEMU (TCG) virtual machine booting Debian 12 with systemd as
# PID 1 and the unified cgroup v2 hierarchy only, libvirtd + QEMU, python3-libvirt, python3-lxml
# and sshd inside, reached over SSH on a loopback port forward (docs/production-node.md).
#
#   prodnode.sh build    debootstrap the root tree, make the image, kernel, initramfs and SSH key;
#                        cached in $PRODNODE_IMAGES, rebuilt only when the recipe changes
#   prodnode.sh start    build if needed, then boot the node (one instance) and wait for SSH
#   prodnode.sh wait     wait until the running node answers SSH
#   prodnode.sh ssh ...  run a command on the node (no command: a login shell), as the operator
#                        user `ops` (sudo without password, as on a managed node)
#   prodnode.sh stop     power the node off (only the QEMU this script started, by its pidfile) and
#                        drop its run-time disk overlay: the next start boots the clean image
#   prodnode.sh status   running or stopped, port, pid
#   prodnode.sh inventory  an Ansible inventory (YAML) that reaches the node
#
# Settings (environment): PRODNODE_PORT (2222), PRODNODE_IMAGES (/var/lib/hpcvirt/images/prodnode),
# PRODNODE_RUN (/var/lib/hpcvirt/prodnode), PRODNODE_GUEST_IMAGES (/var/lib/hpcvirt/images: the
# tiny heartbeat guest, copied into the node at build time), PRODNODE_MIRROR (default: the
# Debian mirror this machine's apt uses), PRODNODE_MEMORY (MiB, 3072), PRODNODE_CPUS (2).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
IMAGES=${PRODNODE_IMAGES:-/var/lib/hpcvirt/images/prodnode}
RUN=${PRODNODE_RUN:-/var/lib/hpcvirt/prodnode}
GUEST_IMAGES=${PRODNODE_GUEST_IMAGES:-/var/lib/hpcvirt/images}
PORT=${PRODNODE_PORT:-2222}
MEMORY=${PRODNODE_MEMORY:-3072}
CPUS=${PRODNODE_CPUS:-2}
WAIT=${PRODNODE_WAIT:-300}
SUITE=bookworm
USER_NAME=ops

if ! [[ $PORT =~ ^[0-9]{1,5}$ ]] || ((PORT < 1024 || PORT > 65535)); then
  echo "prodnode: PRODNODE_PORT must be a port 1024-65535, not '$PORT'" >&2; exit 2
fi
[[ $MEMORY =~ ^[0-9]{3,6}$ ]] || { echo "prodnode: PRODNODE_MEMORY must be MiB (3-6 digits), not '$MEMORY'" >&2; exit 2; }
[[ $CPUS =~ ^[1-9]$ ]] || { echo "prodnode: PRODNODE_CPUS must be 1-9, not '$CPUS'" >&2; exit 2; }

# Everything the image is made of: a change in any of these rebuilds it.
PACKAGES=systemd-sysv,dbus,dbus-daemon,dbus-bin,dbus-system-bus-common,libpam-systemd,udev
PACKAGES+=,linux-image-cloud-amd64,initramfs-tools
PACKAGES+=,qemu-system-x86,qemu-utils,libvirt-daemon-system,libvirt-clients
PACKAGES+=,python3,python3-libvirt,python3-lxml
PACKAGES+=,openssh-server,sudo,iproute2,ifupdown,isc-dhcp-client
CMDLINE="root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 net.ifnames=0"

log() { echo "prodnode: $*" >&2; }
die() { log "$*"; exit 1; }

key() { echo "$IMAGES/id_ed25519"; }
pidfile() { echo "$RUN/qemu.pid"; }
running() { [[ -s $(pidfile) ]] && kill -0 "$(cat "$(pidfile)")" 2>/dev/null; }

recipe_stamp() {
  { cat "$here/prodnode.sh"; cat "$GUEST_IMAGES/.stamp" 2>/dev/null || echo no-guest; } | sha256sum | cut -c1-16
}

# The Debian mirror this machine's apt uses (deb822 .sources or one-line sources.list), for bookworm.
debian_mirror() {
  local f uri
  if [[ -n ${PRODNODE_MIRROR:-} ]]; then echo "$PRODNODE_MIRROR"; return; fi
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    uri=$(awk -v s="$SUITE" '
      /^$/ { if (u != "" && ok) { print u; exit } u = ""; ok = 0; next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
      END { if (u != "" && ok) print u }' "$f" | head -1)
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    uri=$(awk -v s="$SUITE" '$1 == "deb" { o = ($2 ~ /^\[/) ? 1 : 0; if ($(3 + o) == s) { print $(2 + o); exit } }' "$f")
    [[ -n $uri ]] && { echo "$uri"; return; }
  done
  die "no apt source for $SUITE in /etc/apt/sources.list*; set PRODNODE_MIRROR"
}

cmd_build() {
  local stamp
  stamp=$(recipe_stamp)
  if [[ -f $IMAGES/.stamp && $(cat "$IMAGES/.stamp") == "$stamp" && -f $IMAGES/root.img && -f $(key) ]]; then
    log "image cached in $IMAGES"
    return 0
  fi
  [[ $(id -u) == 0 ]] || die "build needs root (debootstrap, chroot)"
  for tool in debootstrap mkfs.ext4 ssh-keygen qemu-img; do
    command -v "$tool" >/dev/null || die "'$tool' is missing (run scripts/setup-host.sh)"
  done
  [[ -f $GUEST_IMAGES/hpcvirt-tiny.qcow2 ]] || die "no tiny guest image in $GUEST_IMAGES (run tools/guest/build-image.sh)"
  running && die "the node is running from the old image: stop it first (prodnode.sh stop)"
  local mirror start work tree
  mirror=$(debian_mirror)
  start=$(date +%s)
  work=$(mktemp -d /var/tmp/prodnode-build.XXXXXX)
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  tree=$work/root
  log "debootstrap $SUITE from $mirror (a few minutes)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tree" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  log "debootstrap done in $(( $(date +%s) - start )) s"

  # The SSH key is made here, at set-up time, and lives beside the image it opens.
  install -d -m 0700 "$work/key"
  ssh-keygen -q -t ed25519 -N '' -C "hpcvirt-prodnode" -f "$work/key/id_ed25519"

  echo prodnode > "$tree/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tprodnode\n' > "$tree/etc/hosts"
  printf '/dev/vda / ext4 rw 0 1\n' > "$tree/etc/fstab"
  install -d "$tree/etc/network"
  printf 'auto lo\niface lo inet loopback\n\nauto eth0\niface eth0 inet dhcp\n' > "$tree/etc/network/interfaces"
  chroot "$tree" passwd -dq root >/dev/null 2>&1 || chroot "$tree" passwd -d root >/dev/null
  # The operator account: key login, sudo without password (become, as on a managed node).
  chroot "$tree" useradd -m -s /bin/bash "$USER_NAME"
  install -d -m 0700 "$tree/home/$USER_NAME/.ssh" "$tree/root/.ssh"
  install -m 0600 "$work/key/id_ed25519.pub" "$tree/home/$USER_NAME/.ssh/authorized_keys"
  install -m 0600 "$work/key/id_ed25519.pub" "$tree/root/.ssh/authorized_keys"
  chroot "$tree" chown -R "$USER_NAME:$USER_NAME" "/home/$USER_NAME/.ssh"
  printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$USER_NAME" > "$tree/etc/sudoers.d/$USER_NAME"
  chmod 0440 "$tree/etc/sudoers.d/$USER_NAME"
  printf 'UseDNS no\nPasswordAuthentication no\n' > "$tree/etc/ssh/sshd_config.d/hpcvirt.conf"
  # Nothing the node does not need at boot.
  # libvirt-guests would hold a poweroff for five minutes: the tiny guest ignores ACPI shutdown.
  for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer \
      libvirt-guests.service; do
    if [[ -e $tree/lib/systemd/system/$unit ]]; then chroot "$tree" systemctl mask -q "$unit" 2>/dev/null || true; fi
  done
  # The tiny heartbeat guest, where the collection looks for it on a node.
  install -d "$tree/var/lib/hpcvirt/images"
  cp "$GUEST_IMAGES"/hpcvirt-tiny.{vmlinuz,initrd,qcow2} "$tree/var/lib/hpcvirt/images/"
  [[ -f $GUEST_IMAGES/.stamp ]] && cp "$GUEST_IMAGES/.stamp" "$tree/var/lib/hpcvirt/images/.stamp"
  rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*_Packages

  local kernel initrd
  kernel=$(find "$tree/boot" -maxdepth 1 -name 'vmlinuz-*' | sort -V | tail -1)
  initrd=$(find "$tree/boot" -maxdepth 1 -name 'initrd.img-*' | sort -V | tail -1)
  [[ -f $kernel && -f $initrd ]] || die "no kernel or initramfs in the tree's /boot"
  mkfs.ext4 -q -F -L prodnode -d "$tree" "$work/root.img" 6G >/dev/null
  install -d -m 0755 "$IMAGES"
  rm -f "$IMAGES/.stamp"
  install -m 0644 "$kernel" "$IMAGES/vmlinuz"
  install -m 0644 "$initrd" "$IMAGES/initrd.img"
  mv "$work/root.img" "$IMAGES/root.img"
  install -m 0600 "$work/key/id_ed25519" "$IMAGES/id_ed25519"
  install -m 0644 "$work/key/id_ed25519.pub" "$IMAGES/id_ed25519.pub"
  echo "$stamp" > "$IMAGES/.stamp"
  log "image built in $IMAGES in $(( $(date +%s) - start )) s (kernel $(basename "$kernel"))"
}

ssh_opts() {
  echo -i "$(key)" -p "$PORT" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o ConnectTimeout=5
}

cmd_ssh() {
  # shellcheck disable=SC2046
  exec ssh $(ssh_opts) "$USER_NAME@127.0.0.1" "$@"
}

cmd_wait() {
  running || die "the node is not running (prodnode.sh start)"
  local t0=$SECONDS
  # shellcheck disable=SC2046
  until ssh $(ssh_opts) "$USER_NAME@127.0.0.1" true 2>/dev/null; do
    running || die "the node stopped while booting (console: $RUN/console.log)"
    ((SECONDS - t0 < WAIT)) || die "no SSH after $WAIT s (console: $RUN/console.log)"
    sleep 2
  done
  log "SSH answers on 127.0.0.1:$PORT"
}

cmd_start() {
  if running; then
    log "already running (pid $(cat "$(pidfile)"), port $PORT)"
    cmd_wait
    return
  fi
  cmd_build
  install -d -m 0700 "$RUN"
  # The node writes to an overlay: the cached image stays clean for the next start.
  if [[ ! -f $RUN/overlay.qcow2 ]]; then
    qemu-img create -q -f qcow2 -F raw -b "$IMAGES/root.img" "$RUN/overlay.qcow2"
  fi
  : > "$RUN/console.log"
  local t0=$SECONDS
  qemu-system-x86_64 -name hpcvirt-prodnode -accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEMORY" \
    -kernel "$IMAGES/vmlinuz" -initrd "$IMAGES/initrd.img" -append "$CMDLINE" \
    -drive "file=$RUN/overlay.qcow2,if=virtio,format=qcow2" \
    -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$PORT-:22" \
    -display none -serial "file:$RUN/console.log" -pidfile "$(pidfile)" -daemonize
  log "booting (pid $(cat "$(pidfile)"), console $RUN/console.log)"
  cmd_wait
  log "up in $((SECONDS - t0)) s"
}

cmd_stop() {
  if running; then
    local pid
    pid=$(cat "$(pidfile)")
    # shellcheck disable=SC2046
    ssh $(ssh_opts) "$USER_NAME@127.0.0.1" sudo systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then kill "$pid"; sleep 1; fi
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -f "$(pidfile)" "$RUN/overlay.qcow2"
}

cmd_status() {
  if running; then echo "running pid=$(cat "$(pidfile)") port=$PORT"; else echo "stopped"; fi
}

cmd_inventory() {
  cat <<EOF
---
all:
  children:
    prodnodes:
      hosts:
        prodnode:
          ansible_host: 127.0.0.1
          ansible_port: $PORT
          ansible_user: $USER_NAME
          ansible_ssh_private_key_file: $(key)
          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          ansible_python_interpreter: /usr/bin/python3
          ansible_become: true
EOF
}

case ${1:-} in
  build) cmd_build ;;
  start) cmd_start ;;
  wait) cmd_wait ;;
  ssh) shift; cmd_ssh "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  inventory) cmd_inventory ;;
  *) echo "usage: $0 build|start|wait|ssh [command...]|stop|status|inventory" >&2; exit 2 ;;
esac
