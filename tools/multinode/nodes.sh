#!/usr/bin/env bash
# Extra libvirt nodes on this one machine, for migration and multinode tests.
#
#   nodes.sh start [N]    start hpcvirt-node2 .. hpcvirt-node<N> (default N=2); idempotent
#   nodes.sh stop [N]     stop what start started (only those daemons, by their pidfiles)
#   nodes.sh status [N]   one line per node: name, state, URI
#   nodes.sh uri NAME     the libvirt URI of a node (hpcvirt-node1 is the main libvirtd)
#
# Each extra node is a libvirtd in its own mount, UTS and network namespaces (unshare -m -u -n,
# private propagation) with private bind mounts over /etc/libvirt (a copy of the configuration
# files only, with its own host_uuid, and cgroup_controllers = [ ] so its guests do not fight the
# main libvirtd over machine cgroups), /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
# /var/cache/libvirt, and its own virtlogd and libvirtd with pidfiles. Everything else (images,
# guest overlays, console logs) is the machine's file system, seen alike by every node, which is
# what "shared storage" means in this test bed.
#
# hpcvirt-node1 is the main libvirtd (qemu:///system): never started, stopped or changed here.
# Its socket directory is bind-mounted (read-only alias, host namespace) at
# $NODES_DIR/hpcvirt-node1/run so that the extra nodes, whose /run/libvirt is their own, can reach
# it at the same URI as everyone else.
#
# Live migration between nodes runs over UNIX sockets in $NODES_DIR/migrate (mode 1777: QEMU runs
# as libvirt-qemu). The collection's migrate module picks sockets there when told
# (migrate_socket_dir) — see docs/migration.md.
set -euo pipefail

NODES_DIR=${HPCVIRT_NODES_DIR:-/var/lib/hpcvirt/nodes}
MIGRATE_DIR="$NODES_DIR/migrate"
NODE1_RUN="$NODES_DIR/hpcvirt-node1/run"

node_dir() { echo "$NODES_DIR/$1"; }
node_uri() { echo "qemu+unix:///system?socket=$(node_dir "$1")/run/libvirt-sock"; }

pid_alive() {  # pidfile -> 0 when its process runs
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

answers() {  # name -> 0 when its libvirtd answers
  /usr/bin/python3 - "$(node_uri "$1")" <<'EOF' 2>/dev/null
import sys, libvirt
libvirt.registerErrorHandler(lambda c, e: None, None)
libvirt.open(sys.argv[1]).close()
EOF
}

prepare_config() {  # name -> a private copy of /etc/libvirt: configuration files only, no guests
  local name=$1 dir etc uuid
  dir=$(node_dir "$name")
  etc="$dir/etc"
  mkdir -p "$etc" "$dir/run" "$dir/lib" "$dir/log" "$dir/cache"
  if [[ ! -f $etc/.hpcvirt-node ]]; then
    find /etc/libvirt -maxdepth 1 -type f -exec cp -p {} "$etc/" \;
    [[ -d /etc/libvirt/nwfilter ]] && cp -rp /etc/libvirt/nwfilter "$etc/"
    mkdir -p "$etc/qemu/networks" "$etc/storage" "$etc/secrets" "$etc/hooks"
    uuid=$(cat /proc/sys/kernel/random/uuid)
    printf '\n# hpcvirt test-bed node %s\nhost_uuid = "%s"\n' "$name" "$uuid" >>"$etc/libvirtd.conf"
    printf '\n# hpcvirt test-bed node %s: no cgroups (the main libvirtd owns machine cgroups)\ncgroup_controllers = [ ]\n' \
      "$name" >>"$etc/qemu.conf"
    echo "$uuid" >"$etc/.hpcvirt-node"
  fi
}

ensure_node1_alias() {
  mkdir -p "$NODE1_RUN"
  if ! mountpoint -q "$NODE1_RUN"; then
    mount --bind /run/libvirt "$NODE1_RUN"
  fi
}

start_node() {
  local name=$1 dir
  dir=$(node_dir "$name")
  if pid_alive "$dir/libvirtd.pid" && answers "$name"; then
    echo "$name: already running"
    return 0
  fi
  stop_node "$name" quiet
  prepare_config "$name"
  rm -f "$dir/run/libvirt-sock" "$dir/run/libvirt-sock-ro" "$dir/run/libvirt-admin-sock"
  # The daemons keep the namespaces alive after this shell exits. (The script is single-quoted on
  # purpose: it expands its own positional arguments inside the new namespaces.)
  # shellcheck disable=SC2016
  unshare -m -u -n --propagation private /bin/bash -euc '
    name=$1 dir=$2
    hostname "$name"
    ip link set lo up 2>/dev/null || true
    mount --bind "$dir/etc" /etc/libvirt
    mount --bind "$dir/run" /run/libvirt
    mount --bind "$dir/lib" /var/lib/libvirt
    mount --bind "$dir/log" /var/log/libvirt
    mount --bind "$dir/cache" /var/cache/libvirt
    virtlogd -d -p "$dir/virtlogd.pid"
    libvirtd -d -p "$dir/libvirtd.pid"
  ' _ "$name" "$dir"
  for _ in $(seq 1 120); do
    if answers "$name"; then
      echo "$name: started, $(node_uri "$name")"
      return 0
    fi
    sleep 0.25
  done
  echo "$name: libvirtd does not answer at $(node_uri "$name") (log: $dir/log/libvirtd.log)" >&2
  return 1
}

kill_pidfile() {  # pidfile -> stop that process (TERM, then KILL), remove the file
  local pidfile=$1 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop_node() {
  local name=$1 quiet=${2:-} dir pidfile
  dir=$(node_dir "$name")
  # Guests of this node first: their QEMU processes are children of nobody we track otherwise.
  for pidfile in "$dir"/run/qemu/*.pid; do
    [[ -e $pidfile ]] && kill_pidfile "$pidfile"
  done
  kill_pidfile "$dir/libvirtd.pid"
  kill_pidfile "$dir/virtlogd.pid"
  [[ -n $quiet ]] || echo "$name: stopped"
}

status_node() {
  local name=$1 dir
  dir=$(node_dir "$name")
  if pid_alive "$dir/libvirtd.pid" && answers "$name"; then
    echo "$name running $(node_uri "$name")"
  else
    echo "$name stopped $(node_uri "$name")"
  fi
}

names() {  # N -> hpcvirt-node2 .. hpcvirt-nodeN
  local n=${1:-2} i
  for ((i = 2; i <= n; i++)); do echo "hpcvirt-node$i"; done
}

main() {
  local cmd=${1:-status} n=${2:-2} name
  if [[ $cmd != uri && ! $n =~ ^[0-9]+$ ]]; then
    echo "N must be a number, not '$n'" >&2
    exit 2
  fi
  case $cmd in
    start)
      mkdir -p "$MIGRATE_DIR"
      chmod 1777 "$MIGRATE_DIR"
      ensure_node1_alias
      for name in $(names "$n"); do start_node "$name"; done
      ;;
    stop)
      for name in $(names "$n"); do stop_node "$name"; done
      if mountpoint -q "$NODE1_RUN" && ! compgen -G "$NODES_DIR/hpcvirt-node*/libvirtd.pid" >/dev/null; then
        umount "$NODE1_RUN"
      fi
      ;;
    status)
      echo "hpcvirt-node1 main $(node_uri hpcvirt-node1)"
      for name in $(names "$n"); do status_node "$name"; done
      ;;
    uri)
      node_uri "${2:?name}"
      ;;
    *)
      echo "usage: $0 start|stop|status [N] | uri NAME" >&2
      exit 2
      ;;
  esac
}

main "$@"
