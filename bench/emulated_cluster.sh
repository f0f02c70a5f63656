#!/bin/bash
# emulated_cluster.sh: an emulated cluster on one machine, for benchmarks that need a real network
# between MPI ranks: N "hosts" (network namespaces lsh0..lsh<N-1>, addresses 198.19.0.1..N: the
# benchmarking range 198.18.0.0/15, which exists only inside the namespaces) joined by a switch
# (namespace lssw) with a per-host rate (tc tbf on both ends of each host's cable) and a one-way
# delay (emulated_cluster.d/delayhub.c, a userspace switch holding every frame DELAY_US
# microseconds, for kernels without sch_netem). Open MPI runs across the hosts over TCP, as on real
# nodes: each host has its own hostname and /dev/shm, so ranks on different hosts never share memory.
# Needs root, iproute2 (ip, tc), gcc, unshare.
#
#   bench/emulated_cluster.sh up N RATE DELAY_US      e.g. up 4 100mbit 500   (RATE: tc rate or none)
#   bench/emulated_cluster.sh mpirun RANKS_PER_HOST PROGRAM [ARGS...]   N x RANKS_PER_HOST ranks, block order
#   bench/emulated_cluster.sh probe [A B]             TCP round trip and bandwidth from host A to B (0 1)
#   bench/emulated_cluster.sh down                    removes everything `up` made (safe to repeat)
#
# Environment: OPENBLAS_NUM_THREADS (default 1) is passed to the ranks. Only one cluster at a time
# (state in /run/lowsync-cluster.*); other tools' namespaces are left alone.
set -euo pipefail
D=$(cd "$(dirname "${BASH_SOURCE[0]}")/emulated_cluster.d" && pwd)
RUN=/run/lowsync-cluster
STATE=$RUN.hosts
PREFIX=198.19.0
cmd=${1:-}; shift || true

build() {  # helper binaries, rebuilt when their source changes
  local name=$1
  if [ ! -x "$RUN.$name" ] || [ "$D/$name.c" -nt "$RUN.$name" ]; then gcc -O2 -o "$RUN.$name" "$D/$name.c"; fi
}

case "$cmd" in
  up)
    N=${1:?N}; RATE=${2:-none}; DELAY=${3:-0}
    [ -e "$STATE" ] && { echo "emulated_cluster: already up ($(cat "$STATE")); run down first" >&2; exit 1; }
    build delayhub
    build linkprobe
    echo "$N $RATE $DELAY" > "$STATE"  # first, so that `down` cleans up a half-made cluster
    ip netns add lssw
    ip -n lssw link set lo up
    if [ "$DELAY" = 0 ]; then ip -n lssw link add br0 type bridge; ip -n lssw link set br0 up; fi
    ports=()
    for ((i = 0; i < N; i++)); do
      ns=lsh$i
      ip netns add $ns
      ip -n $ns link set lo up
      ip link add eth0 netns $ns type veth peer name p$i netns lssw
      ip -n $ns addr add $PREFIX.$((i + 1))/24 dev eth0
      ip -n $ns link set eth0 up
      [ "$DELAY" = 0 ] && ip -n lssw link set p$i master br0
      ip -n lssw link set p$i up
      ports+=(p$i)
      if [ "$RATE" != none ]; then  # the host's sending rate, and the switch's rate towards it
        ip netns exec $ns tc qdisc add dev eth0 root tbf rate "$RATE" burst 64kb latency 100ms
        ip netns exec lssw tc qdisc add dev p$i root tbf rate "$RATE" burst 64kb latency 100ms
      fi
    done
    if [ "$DELAY" != 0 ]; then
      # Real-time priority where allowed: on a loaded machine a switch waiting for a core adds delay.
      prio=(); chrt -f 10 true 2>/dev/null && prio=(chrt -f 10)
      ip netns exec lssw "${prio[@]}" "$RUN.delayhub" "$DELAY" "${ports[@]}" < /dev/null > /dev/null 2> "$RUN.delayhub.log" &  # no inherited pipes
      echo $! > "$RUN.delayhub.pid"
      sleep 0.3
      kill -0 "$(cat "$RUN.delayhub.pid")" || { cat "$RUN.delayhub.log" >&2; exit 1; }
    fi
    echo "emulated_cluster: $N hosts $PREFIX.1..$N, rate $RATE, one-way delay $DELAY us" ;;
  mpirun)
    [ -e "$STATE" ] || { echo "emulated_cluster: not up" >&2; exit 1; }
    read -r N _ < "$STATE"
    PPH=${1:?ranks per host}; shift
    hosts=$(for ((i = 1; i <= N; i++)); do printf '%s.%d:%d,' $PREFIX "$i" "$PPH"; done)
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    exec "$D/nsexec" lsh0 mpirun -np $((N * PPH)) --host "${hosts%,}" --mca plm_rsh_agent "$D/nsrsh" \
      --mca btl tcp,vader,self --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
      --mca mpi_yield_when_idle 1 -x OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" -x OMP_NUM_THREADS=1 \
      --wdir "$PWD" "$@" ;;
  probe)
    [ -e "$STATE" ] || { echo "emulated_cluster: not up" >&2; exit 1; }
    A=${1:-0}; B=${2:-1}
    ip netns exec lsh$B "$RUN.linkprobe" serve 5201 &
    server=$!
    ip netns exec lsh$A "$RUN.linkprobe" probe $PREFIX.$((B + 1)) 5201 8
    wait $server ;;
  down)
    if [ -f "$RUN.delayhub.pid" ]; then kill "$(cat "$RUN.delayhub.pid")" 2>/dev/null || true; fi
    for ns in $(ip netns list | awk '/^(lsh[0-9]+|lssw)( |$)/{print $1}'); do ip netns del "$ns"; done
    rm -f "$RUN.delayhub.pid" "$STATE"
    echo "emulated_cluster: down" ;;
  *) sed -n '2,18p' "$0"; exit 2 ;;
esac
