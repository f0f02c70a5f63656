#!/bin/bash
# A slow link between MPI ranks on one machine, the simple way: tc htb caps Open MPI's TCP traffic
# on loopback to one port range (both directions, one rate), all other loopback traffic untouched.
# Root and tc (iproute2) needed. Bandwidth only: this kernel has no netem, so there is no added
# delay (bench/emulated_cluster.sh emulates latency and per-host links too).
#   bench/lo_shape.sh up RATE [PORT_BASE]   e.g. up 100mbit 46080 (PORT_BASE: a multiple of 64)
#   bench/lo_shape.sh down
# and run MPI over loopback TCP inside the range:
#   mpirun --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
#          --mca btl_tcp_port_min_v4 PORT_BASE --mca btl_tcp_port_range_v4 64 ...
set -euo pipefail
action=${1:-}
shift || true
case "$action" in
  up)
    rate=${1:-100mbit}
    base=${2:-46080}
    if (( base % 64 != 0 )); then echo "lo_shape: PORT_BASE must be a multiple of 64" >&2; exit 1; fi
    tc qdisc del dev lo root 2>/dev/null || true
    tc qdisc add dev lo root handle 1: htb r2q 1000
    # One class for traffic to the range's ports, one for traffic from them: each way at `rate`.
    for cls in 10 20; do
      tc class add dev lo parent 1: classid 1:$cls htb rate "$rate" ceil "$rate" burst 64k cburst 64k
    done
    tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip dport "$base" 0xffc0 flowid 1:10
    tc filter add dev lo parent 1: protocol ip prio 2 u32 match ip protocol 6 0xff match ip sport "$base" 0xffc0 flowid 1:20
    echo "lo_shape: TCP ports $base..$((base + 63)) on loopback capped at $rate each way" ;;
  down)
    tc qdisc del dev lo root 2>/dev/null || true
    echo "lo_shape: loopback unshaped" ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2 ;;
esac
