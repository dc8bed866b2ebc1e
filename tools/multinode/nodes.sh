#!/usr/bin/env bash
# Extra libvirt nodes on this one machine, for migration and multinode tests.
#
#   nodes.sh start [N]    start hpcvirt-node2 .. hpcvirt-node<N> (default N=2); idempotent
#   nodes.sh stop [N]     stop what start started (only those daemons, by their pidfiles)
#   nodes.sh status [N]   one line per node: name, state, URI
#   nodes.sh uri NAME     the libvirt URI of a node (hpcvirt-node1 is the main libvirtd)
#   nodes.sh tls-uri NAME the qemu+tls:// URI of an extra node (its address on the test-bed network)
#   nodes.sh start-acl    start hpcvirt-acl: a node whose libvirtd uses the polkit access driver,
#                         with its own dbus-daemon and polkitd; idempotent
#   nodes.sh stop-acl     stop it
#
# TLS. Every extra node hpcvirt-nodeN also has an address, 10.250.0.N/24, on a test-bed network: a
# bridge in the network namespace hpcvirt-bed (which holds 10.250.0.1, for clients), one veth pair
# per node. Its libvirtd listens for TLS there only (listen_tls, listen_addr; port 16514), with
# certificates from a test-bed CA made with certtool ($NODES_DIR/pki/ca) in libvirt's documented
# layout, bind-mounted over /etc/pki in the node's mount namespace only:
#   /etc/pki/CA/cacert.pem                    the CA every peer trusts
#   /etc/pki/libvirt/servercert.pem           CN and SANs: the node's name and 10.250.0.N
#   /etc/pki/libvirt/private/serverkey.pem    mode 0600
#   /etc/pki/libvirt/clientcert.pem           used when this node's libvirtd is a client
#   /etc/pki/libvirt/private/clientkey.pem    (peer-to-peer migration); mode 0600
# $NODES_DIR/pki/client holds a client's set for the bed namespace (pkipath=), and
# $NODES_DIR/pki/rogue one signed by another CA, which the nodes refuse. Keys are never printed.
#
# Access control (hpcvirt-acl). Its libvirtd.conf has access_drivers = [ "polkit" ]; its /run/dbus
# and /etc/polkit-1/rules.d are private (bind mounts of $NODES_DIR/hpcvirt-acl/{dbus,rules}), and
# a dbus-daemon --system and a polkitd run in its mount namespace, so the rules the collection
# writes there decide what each Unix user may do through its socket.
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
PKI_DIR="$NODES_DIR/pki"
BED_NS=hpcvirt-bed
BED_BRIDGE=hvbr0
BED_NET=10.250.0
ACL_NODE=hpcvirt-acl

node_dir() { echo "$NODES_DIR/$1"; }
node_uri() { echo "qemu+unix:///system?socket=$(node_dir "$1")/run/libvirt-sock"; }

pid_alive() {  # pidfile -> 0 when its process runs
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_index() {  # hpcvirt-nodeN -> N (the node's address on the bed network is 10.250.0.N)
  [[ $1 =~ ^hpcvirt-node([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}"
}

node_addr() { echo "$BED_NET.$(node_index "$1")"; }

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
  # libvirtd.conf = the copy with its host_uuid (kept as .base) + what this kind of node needs,
  # written on every start so that a node made by an older nodes.sh gains it too.
  [[ -f $etc/libvirtd.conf.base ]] || cp -p "$etc/libvirtd.conf" "$etc/libvirtd.conf.base"
  {
    cat "$etc/libvirtd.conf.base"
    if [[ -n $(node_index "$name") ]]; then
      printf '\n# hpcvirt test-bed node %s: TLS on its bed address only (keys: /etc/pki, its own)\n' "$name"
      printf 'listen_tls = 1\nlisten_tcp = 0\nlisten_addr = "%s"\n' "$(node_addr "$name")"
      printf 'ca_file = "/etc/pki/CA/cacert.pem"\ncert_file = "/etc/pki/libvirt/servercert.pem"\n'
      printf 'key_file = "/etc/pki/libvirt/private/serverkey.pem"\n'
    fi
    if [[ $name == "$ACL_NODE" ]]; then
      printf '\n# hpcvirt test-bed node %s: every API call checked by polkit\n' "$name"
      printf 'access_drivers = [ "polkit" ]\nauth_unix_rw = "polkit"\nauth_unix_ro = "polkit"\n'
    fi
  } >"$etc/libvirtd.conf.new"
  mv "$etc/libvirtd.conf.new" "$etc/libvirtd.conf"
}

# --- PKI (certtool) -------------------------------------------------------------------------------

certtool_q() {  # certtool with its chatter (certificate dumps) sent away; keys go to files only
  certtool "$@" >/dev/null 2>&1
}

new_key() {  # path -> an RSA key, mode 0600, made once
  [[ -s $1 ]] || (umask 077 && certtool_q --generate-privkey --sec-param medium --outfile "$1")
}

make_ca() {  # dir cn -> dir/cakey.pem, dir/cacert.pem
  local dir=$1 cn=$2
  mkdir -p "$dir"
  chmod 0700 "$dir"
  new_key "$dir/cakey.pem"
  if [[ ! -s $dir/cacert.pem ]]; then
    printf 'cn = "%s"\norganization = "hpcvirt test bed"\nca\ncert_signing_key\nexpiration_days = 3650\n' \
      "$cn" >"$dir/ca.info"
    certtool_q --generate-self-signed --load-privkey "$dir/cakey.pem" --template "$dir/ca.info" \
      --outfile "$dir/cacert.pem"
  fi
}

sign_cert() {  # ca_dir key cert kind cn [addr] -> cert signed by the CA (kind: server|client)
  local ca=$1 key=$2 cert=$3 kind=$4 cn=$5 addr=${6:-} info
  [[ -s $cert ]] && return 0
  new_key "$key"
  info="$cert.info"
  {
    printf 'cn = "%s"\norganization = "hpcvirt test bed"\nexpiration_days = 3650\n' "$cn"
    printf 'encryption_key\nsigning_key\n'
    if [[ $kind == server ]]; then
      printf 'tls_www_server\ndns_name = "%s"\n' "$cn"
      [[ -n $addr ]] && printf 'ip_address = "%s"\n' "$addr"
    else
      printf 'tls_www_client\n'
    fi
  } >"$info"
  certtool_q --generate-certificate --load-privkey "$key" --load-ca-certificate "$ca/cacert.pem" \
    --load-ca-privkey "$ca/cakey.pem" --template "$info" --outfile "$cert"
}

client_set() {  # ca_dir dir cn -> a pkipath= directory: cacert.pem (the real CA), clientcert/key
  local ca=$1 dir=$2 cn=$3
  mkdir -p "$dir"
  chmod 0700 "$dir"
  cp "$PKI_DIR/ca/cacert.pem" "$dir/cacert.pem"
  sign_cert "$ca" "$dir/clientkey.pem" "$dir/clientcert.pem" client "$cn"
}

ensure_pki() {  # the test-bed CA, a client set for the bed namespace and a rogue one
  make_ca "$PKI_DIR/ca" "hpcvirt test-bed CA"
  make_ca "$PKI_DIR/rogue-ca" "not the hpcvirt test-bed CA"
  client_set "$PKI_DIR/ca" "$PKI_DIR/client" hpcvirt-bed-client
  client_set "$PKI_DIR/rogue-ca" "$PKI_DIR/rogue" hpcvirt-rogue-client
  # The rogue client trusts both CAs (so it accepts the nodes and its own certificate passes its
  # own check); the nodes trust only the test-bed CA and refuse it.
  cat "$PKI_DIR/ca/cacert.pem" "$PKI_DIR/rogue-ca/cacert.pem" >"$PKI_DIR/rogue/cacert.pem"
}

node_pki() {  # name -> $dir/pki in libvirt's /etc/pki layout
  local name=$1 pki addr
  pki="$(node_dir "$name")/pki"
  addr=$(node_addr "$name")
  mkdir -p "$pki/CA" "$pki/libvirt/private"
  chmod 0700 "$pki/libvirt/private"
  cp "$PKI_DIR/ca/cacert.pem" "$pki/CA/cacert.pem"
  sign_cert "$PKI_DIR/ca" "$pki/libvirt/private/serverkey.pem" "$pki/libvirt/servercert.pem" server "$name" "$addr"
  sign_cert "$PKI_DIR/ca" "$pki/libvirt/private/clientkey.pem" "$pki/libvirt/clientcert.pem" client "$name"
}

ensure_etc_pki() {  # the bind-mount target; made (empty) only if absent, removed again by stop
  if [[ ! -d /etc/pki ]]; then
    mkdir /etc/pki
    touch "$NODES_DIR/.made-etc-pki"
  fi
}

drop_etc_pki() {
  if [[ -f $NODES_DIR/.made-etc-pki ]]; then
    rmdir /etc/pki 2>/dev/null || true
    rm -f "$NODES_DIR/.made-etc-pki"
  fi
}

# --- test-bed network -----------------------------------------------------------------------------

ensure_bed() {
  if [[ ! -e /run/netns/$BED_NS ]]; then
    ip netns add "$BED_NS"
  fi
  ip -n "$BED_NS" link set lo up
  if ! ip -n "$BED_NS" link show "$BED_BRIDGE" >/dev/null 2>&1; then
    ip -n "$BED_NS" link add name "$BED_BRIDGE" type bridge
    ip -n "$BED_NS" addr add "$BED_NET.1/24" dev "$BED_BRIDGE"
  fi
  ip -n "$BED_NS" link set "$BED_BRIDGE" up
}

drop_bed() {
  [[ -e /run/netns/$BED_NS ]] && ip netns del "$BED_NS"
  return 0
}

ensure_node1_alias() {
  mkdir -p "$NODE1_RUN"
  if ! mountpoint -q "$NODE1_RUN"; then
    mount --bind /run/libvirt "$NODE1_RUN"
  fi
}

start_node() {
  local name=$1 dir index addr=""
  dir=$(node_dir "$name")
  if pid_alive "$dir/libvirtd.pid" && answers "$name"; then
    echo "$name: already running"
    return 0
  fi
  stop_node "$name" quiet
  prepare_config "$name"
  index=$(node_index "$name" || true)
  if [[ -n $index ]]; then
    ensure_pki
    node_pki "$name"
    ensure_etc_pki
    ensure_bed
    addr=$(node_addr "$name")
    ip -n "$BED_NS" link del "hvb$index" 2>/dev/null || true
  fi
  if [[ $name == "$ACL_NODE" ]]; then
    mkdir -p "$dir/dbus" "$dir/rules"
    chmod 0755 "$dir/dbus" "$dir/rules"
    rm -f "$dir/dbus/system_bus_socket" "$dir/dbus/pid"
  fi
  rm -f "$dir/run/libvirt-sock" "$dir/run/libvirt-sock-ro" "$dir/run/libvirt-admin-sock"
  # The daemons keep the namespaces alive after this shell exits. (The script is single-quoted on
  # purpose: it expands its own positional arguments inside the new namespaces.)
  # shellcheck disable=SC2016
  unshare -m -u -n --propagation private /bin/bash -euc '
    name=$1 dir=$2 addr=$3 index=$4 bed=$5 bridge=$6 acl=$7
    hostname "$name"
    ip link set lo up 2>/dev/null || true
    mount --bind "$dir/etc" /etc/libvirt
    mount --bind "$dir/run" /run/libvirt
    mount --bind "$dir/lib" /var/lib/libvirt
    mount --bind "$dir/log" /var/log/libvirt
    mount --bind "$dir/cache" /var/cache/libvirt
    listen=()
    if [[ -n $addr ]]; then
      mount --bind "$dir/pki" /etc/pki
      ip link add name eth0 type veth peer name "hvb$index" netns "$bed"
      ip addr add "$addr/24" dev eth0
      ip link set eth0 up
      ip -n "$bed" link set "hvb$index" master "$bridge" up
      listen=(--listen)
    fi
    if [[ -n $acl ]]; then
      mount --bind "$dir/dbus" /run/dbus
      mount --bind "$dir/rules" /etc/polkit-1/rules.d
      dbus-daemon --system
      /usr/lib/polkit-1/polkitd --no-debug </dev/null >>"$dir/log/polkitd.log" 2>&1 &
      echo $! >"$dir/polkitd.pid"
      for _ in $(seq 1 80); do
        grep -q "Acquired the name" "$dir/log/polkitd.log" 2>/dev/null && break
        sleep 0.1
      done
    fi
    virtlogd -d -p "$dir/virtlogd.pid"
    libvirtd -d "${listen[@]}" -p "$dir/libvirtd.pid"
  ' _ "$name" "$dir" "$addr" "$index" "$BED_NS" "$BED_BRIDGE" "$([[ $name == "$ACL_NODE" ]] && echo 1)"
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
  kill_pidfile "$dir/polkitd.pid"
  kill_pidfile "$dir/dbus/pid"
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
  if [[ $cmd != uri && $cmd != tls-uri && ! $n =~ ^[0-9]+$ ]]; then
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
      if ! compgen -G "$NODES_DIR/hpcvirt-node*/libvirtd.pid" >/dev/null; then
        if mountpoint -q "$NODE1_RUN"; then umount "$NODE1_RUN"; fi
        drop_bed
        drop_etc_pki
      fi
      ;;
    start-acl)
      start_node "$ACL_NODE"
      ;;
    stop-acl)
      stop_node "$ACL_NODE"
      ;;
    status)
      echo "hpcvirt-node1 main $(node_uri hpcvirt-node1)"
      for name in $(names "$n"); do status_node "$name"; done
      ;;
    uri)
      node_uri "${2:?name}"
      ;;
    tls-uri)
      [[ -n $(node_index "${2:?name}") ]] || { echo "no TLS address for '$2'" >&2; exit 2; }
      echo "qemu+tls://$(node_addr "$2")/system"
      ;;
    *)
      echo "usage: $0 start|stop|status [N] | uri NAME | tls-uri NAME | start-acl | stop-acl" >&2
      exit 2
      ;;
  esac
}

main "$@"
