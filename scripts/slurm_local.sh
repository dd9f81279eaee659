#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for trying `launcher=slurm` and for the tests.
#
#   scripts/slurm_local.sh start [DIR]   configure and start munged, slurmctld and slurmd in DIR
#   scripts/slurm_local.sh stop  [DIR]   stop them (by the process ids they wrote in DIR)
#
# DIR defaults to ${TMPDIR:-/tmp}/normbench-slurm. `start` prints the line that points SLURM's
# commands at this cluster (export SLURM_CONF=DIR/slurm.conf); run it, then e.g.
#   normbench sweep norm=bn,gn batch=8 epochs=1 launcher=slurm hydra.launcher.partition=debug
#
# It installs nothing: it needs Debian's slurm-wlm and munge packages
# (apt-get install slurm-wlm munge) and root, as slurmd does. Everything it writes (config, keys,
# state, logs, sockets) stays in DIR; the system's own /etc/slurm and munge are left alone.
# munged wants DIR and every folder above it open to all users (pytest's tmp_path is not).
# One partition, `debug`, holds this machine with its CPUs and memory; there are no GPUs.
# Process tracking by process tree (proctrack/linuxproc) and no task plugin, so no cgroup set-up
# is needed (containers often have none that SLURM could use).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin  # the daemons live there; some shells leave it off the PATH

action=${1:-}
dir=${2:-${TMPDIR:-/tmp}/normbench-slurm}
daemons=(slurmd slurmctld munged)  # stopped in this order: the node, the controller, auth

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

fail() {
  echo "slurm_local: $*" >&2
  exit 1
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  # What the node offers jobs: its memory less 512 MB for the daemons and the system.
  mem_mb=$(( $(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo) - 512 ))
  cat >"$dir/slurm.conf" <<EOF
# Written by normbench's scripts/slurm_local.sh: a one-node cluster in $dir.
ClusterName=normbench-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it starts again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=5
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (default 60 s): a requeued job starts soon after its wait.
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
ReturnToService=2
# Job completion records: sacct -c (and submitit, through sacct) reads ended jobs' states here.
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Seconds between a job's SIGTERM and SIGKILL: time for a checkpoint on scancel or requeue.
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  # slurmd reads cgroup.conf beside slurm.conf even with the plugins above; mount nothing.
  printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' >"$dir/cgroup.conf"
  : >"$dir/plugstack.conf"
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  fail "$what did not come up within ${seconds}s; see the logs in $dir"
}

node_ready() {
  local state
  state=$(sinfo -h -o %T)
  [[ $state == idle* || $state == mixed* || $state == allocated* ]]
}

start() {
  for tool in munged mungekey slurmctld slurmd sinfo sbatch; do
    command -v "$tool" >/dev/null || fail "$tool not found: apt-get install slurm-wlm munge"
  done
  [ "$(id -u)" = 0 ] || fail "slurmd needs root"
  if [ -f "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
    fail "a cluster is already running in $dir (stop it first: $0 stop $dir)"
  fi
  mkdir -p "$dir"/{munge,state,spool}
  chmod 755 "$dir" "$dir/munge"  # munged: its socket must be reachable by every user
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"
  write_config
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -c -f "$SLURM_CONF"  # -c: a clean state (no jobs left from an earlier cluster)
  wait_until 30 slurmctld scontrol ping
  slurmd -f "$SLURM_CONF"
  wait_until 60 "the node" node_ready
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
  local pid_file pid
  for daemon in "${daemons[@]}"; do
    pid_file=$dir/$daemon.pid
    [ "$daemon" = munged ] && pid_file=$dir/munge/munged.pid
    [ -f "$pid_file" ] || continue
    pid=$(cat "$pid_file")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pid_file"
  done
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
