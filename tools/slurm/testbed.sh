#!/usr/bin/env bash
# A real Slurm on one machine: munged, slurmctld and one slurmd per simulated node, all on
# 127.0.0.1, every file under one directory. For tests and demos of hpcvirt.regime's Slurm support.
#
#   tools/slurm/testbed.sh start    install the packages if missing, write the configuration,
#                                   start what is not running (idempotent); prints SLURM_CONF
#   tools/slurm/testbed.sh stop     stop only the daemons this script started (pidfiles)
#   tools/slurm/testbed.sh status   what runs, and `sinfo`
#   tools/slurm/testbed.sh env      print `export SLURM_CONF=...`
#   tools/slurm/testbed.sh reboot-node NODE   restart one slurmd as if its node rebooted
#   tools/slurm/testbed.sh restart-node NODE  restart one slurmd (what `systemctl restart slurmd`
#                                             does on a real node after a regime change); also
#                                             DIR/nodes/NODE/restart-slurmd
#
# Environment (defaults in brackets):
#   HPCVIRT_SLURM_DIR    [/var/lib/hpcvirt/slurm-testbed]  everything lives here
#   HPCVIRT_SLURM_NODES  [2]       number of nodes: node1 .. nodeN
#   HPCVIRT_SLURM_PORT   [16817]   slurmctld's port; node i listens on PORT + i
#   HPCVIRT_SLURM_LIVE_NODE         [none]  the node that is this machine for real: its helper
#                                   reads the real /var/lib/hpcvirt/regime.json and switches with
#                                   the collection's reconfigure playbook on inventories/local
#   HPCVIRT_SLURM_ALLOW_USER_BOOT   [all users]  helpers.conf AllowUserBoot (who may make Slurm
#                                   switch a node with -C)
#
# Each node's regime lives in DIR/nodes/<node>/regime.json (the file a real node keeps in
# /var/lib/hpcvirt/regime.json); the node_features/helpers plugin reads it through the collection's
# helper program (roles/slurm/files/hpcvirt-node-features), so ActiveFeatures follow the regime.
set -euo pipefail

DIR=${HPCVIRT_SLURM_DIR:-/var/lib/hpcvirt/slurm-testbed}
NODES=${HPCVIRT_SLURM_NODES:-2}
PORT=${HPCVIRT_SLURM_PORT:-16817}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HELPER="$REPO/roles/slurm/files/hpcvirt-node-features"
CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
PACKAGES=(munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins)

log() { printf 'slurm-testbed: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "node$i"; done; }

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    # The packages' own services are not started here (no systemd as PID 1; policy-rc.d may forbid
    # it anyway): this script starts private daemons instead.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confnew -o Dpkg::Options::=--force-confdef \
        "${missing[@]}" >&2 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confnew -o Dpkg::Options::=--force-confdef \
            "${missing[@]}" >&2
    }
}

# pid from a pidfile when that process is alive and is ours (its command line names our directory
# or our configuration), so a recycled pid is never mistaken for a daemon of this test bed.
live_pid() {
    local pidfile=$1 pid
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$DIR" || return 1
    echo "$pid"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.2
    done
}

write_config() {
    local cpus mem_mb node i nodes_csv
    cpus=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 / (NODES + 1) ))
    mkdir -p "$DIR"/{etc,log,run,state,munge}
    chmod 0700 "$DIR/munge"
    nodes_csv=$(node_names | paste -sd, -)
    {
        echo "# Written by tools/slurm/testbed.sh: a Slurm of $NODES nodes on 127.0.0.1."
        echo "ClusterName=hpcvirt-testbed"
        echo "SlurmctldHost=localhost"
        echo "SlurmctldPort=$PORT"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "AuthInfo=socket=$MUNGE_SOCKET"
        echo "CredType=cred/munge"
        echo "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
        echo "SlurmdParameters=config_overrides"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobCompType=jobcomp/none"
        echo "MpiDefault=none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SchedulerParameters=bf_interval=1"
        echo "ReturnToService=2"
        echo "SlurmdTimeout=300"
        echo "InactiveLimit=0"
        echo "KillWait=5"
        echo "MailProg=/bin/true"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdSpoolDir=$DIR/spool/%n"
        echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        echo "# Node features space_shared / time_shared come from the collection's helper program."
        echo "NodeFeaturesPlugins=node_features/helpers"
        echo "RebootProgram=$HERE/restart-slurmd"
        echo "ResumeTimeout=120"
        i=0
        for node in $(node_names); do
            i=$((i + 1))
            echo "NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=$nodes_csv Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF.new"
    mv "$CONF.new" "$CONF"
    {
        echo "# One Feature= per line (Slurm 22.05); the helper reads and switches the node's regime."
        echo "Feature=space_shared Helper=$HELPER"
        echo "Feature=time_shared Helper=$HELPER"
        echo "MutuallyExclusive=space_shared,time_shared"
        echo "# A regime change is an Ansible run, far longer than the default 10 s."
        echo "ExecTime=600"
        echo "BootTime=120"
        [ -z "${HPCVIRT_SLURM_ALLOW_USER_BOOT:-}" ] || echo "AllowUserBoot=$HPCVIRT_SLURM_ALLOW_USER_BOOT"
    } >"$DIR/etc/helpers.conf"
    for node in $(node_names); do
        mkdir -p "$DIR/nodes/$node" "$DIR/spool/$node"
        # What `systemctl restart slurmd` is on a real node (the slurm role's slurmd restart command).
        printf '#!/bin/sh\nexec env HPCVIRT_SLURM_DIR=%s HPCVIRT_SLURM_PORT=%s HPCVIRT_SLURM_NODES=%s %s restart-node %s\n' \
            "$DIR" "$PORT" "$NODES" "$HERE/testbed.sh" "$node" >"$DIR/nodes/$node/restart-slurmd"
        chmod 0755 "$DIR/nodes/$node/restart-slurmd"
        if [ "$node" = "${HPCVIRT_SLURM_LIVE_NODE:-}" ]; then
            write_live_node_settings "$node"
            continue
        fi
        cat >"$DIR/nodes/$node/node-features.conf" <<EOF
# hpcvirt-node-features settings for test-bed node $node
[node-features]
node_name = $node
regime_file = $DIR/nodes/$node/regime.json
log_file = $DIR/log/node-features-$node.log
set_command = ${HPCVIRT_SLURM_SET_COMMAND:-$HERE/record-regime $DIR/nodes/$node/regime.json {feature}}
EOF
    done
}

# The live node is this machine: the helper's defaults for the regime record, and a switch that is
# the real thing (the reconfigure playbook on the embedded default inventory; Slurm already holds
# the node for the job that asked, so the playbook leaves Slurm alone: regime_scheduler=none).
write_live_node_settings() {
    local node=$1 playbook=ansible-playbook
    [ -x "$REPO/.venv/bin/ansible-playbook" ] && playbook="$REPO/.venv/bin/ansible-playbook"
    cat >"$DIR/nodes/$node/node-features.conf" <<EOF
# hpcvirt-node-features settings for test-bed node $node: this machine, switched for real
[node-features]
node_name = $node
log_file = $DIR/log/node-features-$node.log
set_command = env ANSIBLE_CONFIG=$REPO/ansible.cfg $playbook {collection}/playbooks/reconfigure.yml -i $REPO/inventories/local/hosts.yml --limit localhost -e regime={feature} -e regime_scheduler=none
EOF
}

start_munge() {
    if live_pid "$DIR/run/munged.pid" >/dev/null; then return 0; fi
    [ -s "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key" >&2
    chmod 0600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
        --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"
    wait_for 20 munged munge -n -S "$MUNGE_SOCKET"
}

start_slurmctld() {
    if live_pid "$DIR/run/slurmctld.pid" >/dev/null; then return 0; fi
    # -f puts our directory on the command line (live_pid recognises the daemon by it).
    SLURM_CONF="$CONF" slurmctld -f "$CONF"
    wait_for 30 slurmctld env SLURM_CONF="$CONF" scontrol ping
}

start_slurmd() {
    local node=$1
    if live_pid "$DIR/run/slurmd-$node.pid" >/dev/null; then return 0; fi
    # The helper program learns which simulated node it speaks for from this environment, which
    # slurmd passes on to the programs it runs.
    SLURM_CONF="$CONF" HPCVIRT_NODE_FEATURES_CONF="$DIR/nodes/$node/node-features.conf" \
        slurmd -f "$CONF" -N "$node" "${@:2}"
}

node_registered() {  # the node answered slurmctld: not DOWN/UNKNOWN/NOT_RESPONDING
    local state
    state=$(SLURM_CONF="$CONF" sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1)
    [ -n "$state" ] && [[ "$state" != down* ]] && [[ "$state" != unknown* ]] && [[ "$state" != *'*' ]]
}

slurmd_start_time() {
    SLURM_CONF="$CONF" scontrol show node -o "$1" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' || true
}

slurmd_restarted() {  # slurmctld has seen a slurmd start after $2 and the node answers
    local now
    now=$(slurmd_start_time "$1")
    [ -n "$now" ] && [ "$now" != "$2" ] && node_registered "$1"
}

cmd_start() {
    install_packages
    [ -x "$HELPER" ] || die "helper program $HELPER is missing or not executable"
    write_config
    start_munge
    start_slurmctld
    # Configuration changed since slurmctld started (e.g. another node count)? Re-read it.
    SLURM_CONF="$CONF" scontrol reconfigure >/dev/null 2>&1 || true
    local node
    for node in $(node_names); do start_slurmd "$node"; done
    for node in $(node_names); do wait_for 60 "$node to register" node_registered "$node"; done
    log "running: $NODES node(s), SLURM_CONF=$CONF"
    echo "export SLURM_CONF=$CONF"
}

stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    pid=$(live_pid "$pidfile") || { rm -f "$pidfile"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        log "$name ($pid) ignored SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    local pidfile
    # Every slurmd we started, whatever the node count is now.
    for pidfile in "$DIR"/run/slurmd-*.pid; do
        [ -e "$pidfile" ] && stop_pidfile "$pidfile" "slurmd"
    done
    stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
    stop_pidfile "$DIR/run/munged.pid" munged
    log "stopped"
}

cmd_status() {
    local rc=0 pidfile name
    for pidfile in "$DIR/run/munged.pid" "$DIR/run/slurmctld.pid" "$DIR"/run/slurmd-*.pid; do
        [ -e "$pidfile" ] || continue
        name=$(basename "$pidfile" .pid)
        if pid=$(live_pid "$pidfile"); then echo "$name: running ($pid)"; else echo "$name: stopped"; rc=3; fi
    done
    [ -e "$DIR/run/slurmctld.pid" ] || { echo "slurmctld: never started"; rc=3; }
    SLURM_CONF="$CONF" sinfo -N -o '%N %T %f %E' 2>/dev/null || rc=3
    return $rc
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    reboot-node)  # used by RebootProgram (restart-slurmd): restart one slurmd, reporting a reboot
        [ -n "${2:-}" ] || die "reboot-node needs a node name"
        sleep 1
        stop_pidfile "$DIR/run/slurmd-$2.pid" "slurmd $2"
        start_slurmd "$2" -b ;;
    restart-node)  # what restarting slurmd does on a real node: it re-reads its features at start
        [ -n "${2:-}" ] || die "restart-node needs a node name"
        started=$(slurmd_start_time "$2")
        stop_pidfile "$DIR/run/slurmd-$2.pid" "slurmd $2"
        start_slurmd "$2"
        wait_for 60 "$2 to register again" slurmd_restarted "$2" "$started" ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|restart|status|env|reboot-node NODE|restart-node NODE" >&2; exit 2 ;;
esac
