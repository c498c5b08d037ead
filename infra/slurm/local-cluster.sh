#!/usr/bin/env bash
# A real Slurm cluster of N nodes on this one machine, to try the Slurm paths on a laptop and in tests:
# one munged, one slurmctld and one slurmd per node (n1..nN, all on this host), no accounting storage.
#
#   eval "$(sudo infra/slurm/local-cluster.sh start)"   # prints: export SLURM_CONF=/tmp/cdc-slurm/slurm.conf
#   sinfo; sbatch ...; squeue
#   sudo infra/slurm/local-cluster.sh stop              # cancels its jobs, stops only what it started
#
# Commands: start | stop | status | env. Settings (environment):
#   CDC_SLURM_DIR    state, logs and config (default /tmp/cdc-slurm); one cluster per directory
#   CDC_SLURM_NODES  nodes (default 2)          CDC_SLURM_CPUS  CPUs per node (default 1)
#   CDC_SLURM_PORT   slurmctld's port; the nodes take the next N (default 16817)
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). The node names go
# into /etc/hosts (127.0.0.1) when they do not resolve, and come out again at stop.
set -euo pipefail

DIR=${CDC_SLURM_DIR:-/tmp/cdc-slurm}
NODES=${CDC_SLURM_NODES:-2}
CPUS=${CDC_SLURM_CPUS:-1}
PORT=${CDC_SLURM_PORT:-16817}
CONF=$DIR/slurm.conf
HOSTS_MARK="# cdc-local-slurm $DIR"
START_TIMEOUT=60

say() { echo "local-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

names() { local i; for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; }

# PIDs of the daemons this directory started (pid files), alive and still running our config.
our_pids() {
  local f pid
  for f in "$DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || continue
    tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF "$DIR/" && echo "$pid"
  done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

preflight() {
  [ "$(id -u)" = 0 ] || die "needs root (slurmd starts jobs as their users; munged and /etc/hosts)"
  local tool missing=()
  for tool in munged slurmctld slurmd; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  for tool in sbatch scontrol sinfo; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} (apt-get install slurm-wlm munge)"
  [[ $NODES =~ ^[1-9][0-9]?$ ]] || die "CDC_SLURM_NODES must be 1-99, got '$NODES'"
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "CDC_SLURM_CPUS must be a positive integer, got '$CPUS'"
  if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1024 || PORT + NODES > 65535)); then
    die "CDC_SLURM_PORT out of range: '$PORT'"
  fi
  local p
  for ((p = PORT; p <= PORT + NODES; p++)); do
    port_in_use "$p" && die "port $p is in use (set CDC_SLURM_PORT)"
  done
  return 0
}

write_config() {
  local host mem_mb
  host=$(hostname)
  mem_mb=$(awk -v n="$NODES" '/^MemTotal:/ { printf "%d", $2 / 1024 / n }' /proc/meminfo)
  cat > "$CONF" <<EOF
# Written by infra/slurm/local-cluster.sh: $NODES nodes on $host, no accounting storage.
ClusterName=cdclocal
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
# an admin's DOWN stays down until 'scontrol update nodename=N state=resume'
ReturnToService=1
SlurmdTimeout=30
KillWait=30
MinJobAge=300
NodeName=n[1-$NODES] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 1))-$((PORT + NODES)) CPUs=$CPUS RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=n[1-$NODES] Default=YES MaxTime=INFINITE State=UP
EOF
}

add_hosts() {
  local name missing=()
  while read -r name; do getent hosts "$name" >/dev/null || missing+=("$name"); done < <(names)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "127.0.0.1 ${missing[*]} $HOSTS_MARK" >> /etc/hosts
}

remove_hosts() {
  grep -qF "$HOSTS_MARK" /etc/hosts || return 0
  # rewrite in place: /etc/hosts may be a bind mount that a rename would not replace
  local kept
  kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts
}

nodes_idle() {
  local states
  states=$(SLURM_CONF=$CONF timeout 10 sinfo -h -N -o '%T' 2>/dev/null | sort -u) || return 1
  [ "$states" = idle ]
}

start() {
  if [ -n "$(our_pids)" ]; then
    say "already running in $DIR"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  preflight
  rm -rf "$DIR/state" "$DIR/spool" "$DIR/run"
  mkdir -p "$DIR"/{munge,state,spool,run,log}
  chmod 755 "$DIR" "$DIR/munge"  # every job's user reaches munged's socket
  mkdir -p "$DIR/munge/key"
  chmod 700 "$DIR/munge/key"
  [ -s "$DIR/munge/key/munge.key" ] || dd if=/dev/urandom of="$DIR/munge/key/munge.key" bs=1024 count=1 status=none
  chmod 400 "$DIR/munge/key/munge.key"
  write_config
  add_hosts
  munged --force --key-file="$DIR/munge/key/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/key/seed"
  slurmctld -c -f "$CONF"  # -c: no jobs carried over from an earlier cluster in this directory
  local name
  while read -r name; do slurmd -N "$name" -f "$CONF"; done < <(names)
  local waited=0
  until nodes_idle; do
    if ((waited >= START_TIMEOUT)); then
      say "error: the nodes were not idle after ${START_TIMEOUT} s; the logs end with:"
      tail -n 5 "$DIR"/log/*.log >&2 || true
      stop >/dev/null
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  say "$NODES nodes idle ($(names | paste -sd, -), $CPUS CPU(s) each) in ${waited} s; logs in $DIR/log"
  echo "export SLURM_CONF=$CONF"
}

stop() {
  local pids pid job jobs waited=0
  pids=$(our_pids)
  if [ -n "$pids" ] && [ -f "$CONF" ]; then
    # jobs first: a job's processes (slurmstepd and its tasks) outlive the slurmd that started them
    jobs=$(SLURM_CONF=$CONF timeout 10 squeue -h -o %i 2>/dev/null || true)
    for job in $jobs; do SLURM_CONF=$CONF timeout 10 scancel "$job" 2>/dev/null || true; done
    while [ -n "$(SLURM_CONF=$CONF timeout 10 squeue -h -o %i 2>/dev/null)" ] && ((waited < 45)); do
      sleep 1
      waited=$((waited + 1))
    done
  fi
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((waited = 0; waited < 15; waited++)); do
    [ -n "$(our_pids)" ] || break
    sleep 1
  done
  for pid in $(our_pids); do kill -KILL "$pid" 2>/dev/null || true; done
  remove_hosts
  rm -f "$DIR"/run/*.pid
  say "stopped ($DIR)"
}

status() {
  if [ -z "$(our_pids)" ]; then
    say "not running ($DIR)"
    return 3
  fi
  SLURM_CONF=$CONF sinfo
  echo "export SLURM_CONF=$CONF"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env  (see the header of this script)" >&2; exit 2 ;;
esac
