#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, from Debian's packages (slurm-wlm, munge), for
# tests and for trying the sbatch scripts: munged, slurmctld and slurmd, configured for this
# host, with all their state (config, spool, logs, pid files) in one folder.
#
#   scripts/slurm/local_cluster.sh start    # idempotent; prints the SLURM_CONF to export
#   scripts/slurm/local_cluster.sh status   # exit 0 when the node answers and is usable
#   scripts/slurm/local_cluster.sh stop     # stops what start started (by pid files)
#   scripts/slurm/local_cluster.sh env      # prints: export SLURM_CONF=...
#
# The configuration lives in $CTUNE_SLURM_DIR (default /tmp/ctune-slurm), never in
# /etc/slurm, so a real cluster's configuration on the same machine is left alone; clients
# find it through SLURM_CONF (jobs inherit it from the submitting shell). Needs root: slurmd
# runs jobs as their owner and munged runs as the munge user. CTUNE_SLURM_TIMEOUT (seconds,
# default 30) bounds the wait for the node to come up; start exits 3 when it does not.
set -euo pipefail

dir=${CTUNE_SLURM_DIR:-/tmp/ctune-slurm}
timeout=${CTUNE_SLURM_TIMEOUT:-30}
conf=$dir/slurm.conf
host=$(hostname -s)

say() { echo "local_cluster: $*"; }

alive() { # pidfile -> 0 when it names a live process
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

munge_works() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_works; then
    return 0
  fi
  install -d -o munge -g munge -m 0700 /etc/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  # --force: a socket left behind by a munged that was killed would otherwise stop it starting.
  runuser -u munge -- /usr/sbin/munged --force
  touch "$dir/munged.started-by-us"
  for _ in $(seq 1 50); do
    munge_works && return 0
    sleep 0.1
  done
  say "munged did not come up"
  return 1
}

write_config() {
  local hw mem_mib
  # The node as slurmd sees it (CPUs, boards, sockets, cores, threads): a layout that differs
  # from the hardware is "reconfigured" at registration, and jobs placed before that can be
  # sized for the wrong layout and stay pending for good.
  hw=$(/usr/sbin/slurmd -C 2>/dev/null | head -1 | grep -o 'CPUs=[0-9]* .*ThreadsPerCore=[0-9]*' || true)
  [ -n "$hw" ] || hw="CPUs=$(nproc)"
  # slurmd drains a node that claims more memory than it has: claim 90% of it.
  mem_mib=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  # A fresh state: no jobs and no node state remembered from an earlier run, so that the node
  # shows as usable only once this slurmd has registered.
  rm -rf "$dir/ctld" "$dir/slurmd" "$dir/slurmctld.log" "$dir/slurmd.log"
  mkdir -p "$dir/ctld" "$dir/slurmd"
  cat >"$conf" <<EOF
# Written by scripts/slurm/local_cluster.sh: one node ($host), everything in $dir.
ClusterName=ctune-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/slurmd
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${CTUNE_SLURMCTLD_PORT:-6817}
SlurmdPort=${CTUNE_SLURMD_PORT:-6818}
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
# A requeued job may start again cred_expire seconds after its requeue (default 120): short
# here, so that the requeue test does not wait. It is also a step credential's lifetime,
# which on one node needs only seconds.
AuthInfo=cred_expire=10
JobRequeue=1
SchedulerParameters=bf_interval=1
MinJobAge=600
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 $hw RealMemory=$mem_mib State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
}

# Bounded: a client waits MessageTimeout (10 s) for a controller that accepts but never answers.
node_state() {
  SLURM_CONF=$conf timeout 5 sinfo -h -n "$host" -o %T 2>/dev/null | head -1 || true
}

is_up() {
  alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid" || return 1
  case "$(node_state)" in
    idle* | mixed* | allocated* | completing*) return 0 ;;
  esac
  return 1
}

start() {
  if [ "$(id -u)" -ne 0 ]; then
    say "needs root (slurmd and munged)"
    return 2
  fi
  for bin in munged slurmctld slurmd sinfo sbatch; do
    command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || {
      say "$bin not found (apt-get install slurm-wlm munge)"
      return 2
    }
  done
  mkdir -p "$dir"
  if is_up; then
    say "already running"
    echo "export SLURM_CONF=$conf"
    return 0
  fi
  # Half-started leftovers (a daemon whose partner died) are stopped first.
  stop_daemons
  start_munge
  write_config
  /usr/sbin/slurmctld -c -f "$conf"
  /usr/sbin/slurmd -f "$conf"
  local deadline=$(($(date +%s) + timeout)) settled=$(($(date +%s) + 3)) state name
  while ! is_up; do
    for name in slurmctld slurmd; do
      if [ "$(date +%s)" -ge "$settled" ] && ! alive "$dir/$name.pid"; then
        say "$name exited: $(grep -m1 -E 'fatal|error: Error' "$dir/$name.log" 2>/dev/null || echo "see $dir/$name.log")"
        return 3
      fi
    done
    state=$(node_state)
    if [ "$(date +%s)" -ge "$deadline" ]; then
      say "the node did not become usable within ${timeout}s (state '$state'); logs in $dir"
      tail -n 5 "$dir/slurmctld.log" "$dir/slurmd.log" 2>/dev/null || true
      return 3
    fi
    # A node that registered DOWN (e.g. after an unclean stop) is returned to service.
    if [[ "$state" == down* ]]; then
      SLURM_CONF=$conf timeout 5 scontrol update nodename="$host" state=resume 2>/dev/null || true
    fi
    sleep 0.2
  done
  say "up: node $host, $(nproc) CPUs, state $(node_state)"
  echo "export SLURM_CONF=$conf"
}

stop_pidfile() { # pidfile name
  local pidfile=$1 name=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_daemons() {
  stop_pidfile "$dir/slurmd.pid" slurmd
  stop_pidfile "$dir/slurmctld.pid" slurmctld
}

stop() {
  [ -d "$dir" ] || { say "not running"; return 0; }
  stop_daemons
  # munged only when this script started it: it may serve a real cluster too.
  if [ -e "$dir/munged.started-by-us" ]; then
    stop_pidfile /run/munge/munged.pid munged
    rm -f "$dir/munged.started-by-us"
  fi
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if is_up; then say "up ($(node_state))"; else say "down"; exit 1; fi
    ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
