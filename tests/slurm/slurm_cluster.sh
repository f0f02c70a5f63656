#!/usr/bin/env bash
# A throwaway Slurm cluster on this machine, for testing the sbatch templates (tests/slurm/test_slurm.py).
#
#   tests/slurm/slurm_cluster.sh install      apt-get install slurm-wlm and munge when missing (root, Debian)
#   tests/slurm/slurm_cluster.sh up DIR       start it; everything it makes lives in DIR
#   tests/slurm/slurm_cluster.sh down DIR     stop what `up` started (every job first)
#
# Then: export SLURM_CONF=DIR/slurm.conf; sbatch --wait job.sbatch
#
# Two nodes, n1 and n2, both this machine: a slurmctld and one slurmd per node, all as root, with
# their own munged (own key and socket in DIR), non-default ports, state, spool and logs in DIR, so
# they touch nothing of a Slurm or munge already on the machine. n2's slurmd runs in a mount
# namespace of its own where DIR/pmix is a private tmpfs: Slurm's PMIx plugin keeps a per-step folder
# there whose name has no node in it, and two nodes on one machine would otherwise collide. Where a
# mount namespace cannot be made, the cluster has n1 only (DIR/nodes says how many). No accounting.
#
# Exit status of `up`: 0 when the cluster is up; 77 (with the reason on stderr) when it cannot be
# started at all here (not root, Slurm not installed, a daemon that will not start).
set -euo pipefail

cmd=${1:-}
D=${2:-}

skip() { echo "slurm_cluster: cannot start a Slurm cluster here: $*" >&2; exit 77; }

free_ports() {  # N free TCP ports on 127.0.0.1
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

alive() {  # a process that exists and has not ended (a zombie has ended; whoever reaps it may not be us)
  [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}

kill_pidfile() {  # kill the process in a pid file and wait (up to 10 s) for it to go
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f" 2>/dev/null) || return 0
  [ -n "$pid" ] && alive "$pid" || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do alive "$pid" || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

case "$cmd" in
  install)
    need=()
    for p in slurm-wlm munge; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    ((${#need[@]})) || exit 0
    [ "$(id -u)" -eq 0 ] || skip "${need[*]} not installed, and installing needs root"
    command -v apt-get >/dev/null || skip "${need[*]} not installed, and there is no apt-get"
    echo "slurm_cluster: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } ||
      skip "apt-get install ${need[*]} failed"
    ;;

  up)
    [ -n "$D" ] || { echo "usage: $0 up DIR" >&2; exit 2; }
    [ "$(id -u)" -eq 0 ] || skip "not root (the daemons run as root here)"
    for b in slurmctld slurmd munged sbatch scontrol; do
      command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || skip "$b not installed (run: $0 install)"
    done
    mkdir -p "$D"/{state,spool/n1,spool/n2,log,run,pmix,munge-key,munge-run}
    chmod 755 "$D" "$D/munge-run"   # munged wants its socket's folders searchable by everyone
    chmod 700 "$D/munge-key"
    D=$(cd "$D" && pwd)
    read -r ctld_port n1_port n2_port <<<"$(free_ports 3)"
    # Slurm's node sizes are what it schedules by, not checked against the hardware
    # (config_overrides): room for a few small jobs at once on each node.
    cpus=8
    nodes="n1,n2"

    # munge: our own key and daemon.
    dd if=/dev/urandom of="$D/munge-key/munge.key" bs=1024 count=1 status=none
    chmod 400 "$D/munge-key/munge.key"
    /usr/sbin/munged --socket="$D/munge-run/munge.socket" --key-file="$D/munge-key/munge.key" \
      --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/munge-key/seed" ||
      skip "munged would not start ($(tail -n 1 "$D/log/munged.log" 2>/dev/null))"

    cat >"$D/slurm.conf" <<CONF
ClusterName=lowsynctest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge-run/munge.socket
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
InactiveLimit=0
MinJobAge=300
MailProg=/bin/true
KillWait=5
Waittime=0
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$n1_port CPUs=$cpus RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$n2_port CPUs=$cpus RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
    echo "PMIxCliTmpDirBase=$D/pmix" >"$D/mpi.conf"
    export SLURM_CONF=$D/slurm.conf

    /usr/sbin/slurmctld -f "$SLURM_CONF" || skip "slurmctld would not start (see $D/log/slurmctld.log)"
    /usr/sbin/slurmd -f "$SLURM_CONF" -N n1 || skip "slurmd would not start (see $D/log/slurmd-n1.log)"
    if unshare --mount --propagation private true 2>/dev/null; then
      unshare --mount --propagation private sh -c \
        "mount -t tmpfs -o size=64m lowsync-pmix '$D/pmix' && exec /usr/sbin/slurmd -f '$SLURM_CONF' -N n2" ||
        skip "slurmd n2 would not start (see $D/log/slurmd-n2.log)"
    else
      echo "slurm_cluster: no mount namespace here (unshare failed): one node only" >&2
      nodes="n1"
      scontrol update NodeName=n2 State=DRAIN Reason="not started" 2>/dev/null || true
    fi
    echo "$nodes" | tr ',' '\n' | wc -l >"$D/nodes"

    for _ in $(seq 1 60); do
      idle=$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -c ' idle' || true)
      [ "$idle" -ge "$(cat "$D/nodes")" ] && break
      sleep 0.5
    done
    [ "${idle:-0}" -ge "$(cat "$D/nodes")" ] ||
      skip "the nodes did not come up: $(sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')"
    sinfo
    echo "export SLURM_CONF=$SLURM_CONF"
    ;;

  down)
    [ -n "$D" ] && [ -d "$D" ] || { echo "usage: $0 down DIR (an existing cluster folder)" >&2; exit 2; }
    D=$(cd "$D" && pwd)
    export SLURM_CONF=$D/slurm.conf
    if [ -f "$D/run/slurmctld.pid" ] && alive "$(cat "$D/run/slurmctld.pid")"; then
      scancel --full --quiet --user=root 2>/dev/null || true   # every job of this cluster (SLURM_CONF)
      for _ in $(seq 1 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for f in "$D"/run/slurmd-*.pid "$D/run/slurmctld.pid" "$D/run/munged.pid"; do kill_pidfile "$f"; done
    echo "slurm_cluster: stopped"
    ;;

  *)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
