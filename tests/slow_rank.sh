#!/usr/bin/env bash
# slow_rank.sh: makes some MPI ranks slow, to test and benchmark how lowsync sees and copes with a
# slow rank. Put it in front of the program under mpirun; the chosen world ranks have their CPU time
# capped (a CFS quota, or a stop/continue duty cycle), the others run as they are; then it execs
# the program.
#
#   mpirun -np 2 -x LOWSYNC_SLOW_RANKS=1 tests/slow_rank.sh build/lowsync profile job.yaml
#   tests/slow_rank.sh --remove     # afterwards: removes the cgroups (their processes have exited)
#   tests/slow_rank.sh --check      # exit 0 if a quota cgroup can be made here; else says why, exit 1
#
# Environment (pass it to the ranks with mpirun -x, or export it before mpirun on one host):
#   LOWSYNC_SLOW_RANKS   comma-separated world ranks to slow (default: 1)
#   LOWSYNC_SLOW_PERCENT CPU each slowed rank may use, in percent of one core (default: 50)
#   LOWSYNC_SLOW_MODE    quota (default) or duty, the mechanism below
#   LOWSYNC_SLOW_PERIOD_US the period of either mechanism (default: 5000 for quota, 400 for duty)
#   LOWSYNC_SLOW_CGROUP  name of the parent cgroup (default: lowsync_slow); one child per slowed
#                        rank (rank<R>), each with its own quota. Use distinct names for runs at
#                        the same time.
#
# quota: the cgroup v1 `cpu` controller (mounted at /sys/fs/cgroup/cpu: cpu.cfs_period_us =
# period, cpu.cfs_quota_us = period x percent / 100); where there is none, cgroup v2's cpu.max
# (pure v2 at /sys/fs/cgroup with the cpu controller enabled). Needs root. On the development
# machine (hybrid cgroups: v1 cpu/cpuset, a v2 tree at /sys/fs/cgroup/unified without the cpu
# controller) only the v1 path works, and it does: a busy loop in a 50% cgroup gets 0.50 CPU
# seconds per second. The quota is enforced per period, and a slowed rank runs at full speed until
# its quota is spent, then waits for the next period. The kernel will not take a quota under 1 ms,
# and a TP decode step syncs about every millisecond, so even the shortest period leaves the rank a
# *bursty* full-speed processor, not a slow one: in its running phase it reaches each sync as fast
# as its peer and spin-waits there, spending its quota on waiting. Work split in proportion to its
# average speed then gains nothing (measured: SmolLM2 shapes, 16 layers, tp 2, rank 1 at 50%:
# speed-proportional shares 1.00x of even ones, with a 5 ms or a 2 ms period).
# duty: a helper (tests/duty_cycle.c, compiled with cc on first use) stops and continues the rank
# (SIGSTOP / SIGCONT) within every period, 400 us by default, so the rank is slow at the time scale
# of a layer, as a slower processor is. The stops cost some speed of their own (on the development
# machine a 60% duty cycle gives about half of rank 0's measured speed); `lowsync profile` measures
# what the rank actually gets, and that is what a benchmark should quote.
set -euo pipefail

NAME="${LOWSYNC_SLOW_CGROUP:-lowsync_slow}"
MODE="${LOWSYNC_SLOW_MODE:-quota}"
if [ "$MODE" = duty ]; then PERIOD_US="${LOWSYNC_SLOW_PERIOD_US:-400}"; else PERIOD_US="${LOWSYNC_SLOW_PERIOD_US:-5000}"; fi
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The cgroup tree to use: "v1 DIR" or "v2 DIR", or a reason why none can be used (exit 1).
pick_tree() {
  if [ -w /sys/fs/cgroup/cpu ] && [ -e /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    echo "v1 /sys/fs/cgroup/cpu"
  elif [ -e /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers \
       && [ -w /sys/fs/cgroup ]; then
    echo "v2 /sys/fs/cgroup"
  else
    echo "no writable cgroup cpu controller (need root and cgroup v1 cpu at /sys/fs/cgroup/cpu or v2 with cpu)"
    return 1
  fi
}

# Creates DIR with a quota of PERCENT of one core.
make_group() {  # kind dir percent
  local kind=$1 dir=$2 percent=$3 quota=$((PERIOD_US * $3 / 100))
  mkdir -p "$dir"
  if [ "$kind" = v1 ]; then
    echo "$PERIOD_US" > "$dir/cpu.cfs_period_us"
    echo "$quota" > "$dir/cpu.cfs_quota_us"
  else
    # v2: a cgroup gets the cpu controller only if every ancestor hands it down.
    echo +cpu > "$(dirname "$(dirname "$dir")")/cgroup.subtree_control" 2>/dev/null || true
    echo +cpu > "$(dirname "$dir")/cgroup.subtree_control" 2>/dev/null || true
    echo "$quota $PERIOD_US" > "$dir/cpu.max"
  fi
}

case "${1:-}" in
  --check)
    if ! tree=$(pick_tree); then echo "$tree"; exit 1; fi
    read -r kind root <<< "$tree"
    probe="$root/${NAME}_probe_$$"
    if ! (make_group "$kind" "$probe/rank0" 50) 2>/dev/null; then
      rmdir "$probe/rank0" "$probe" 2>/dev/null || true
      echo "cannot create a cgroup with a CPU quota under $root"
      exit 1
    fi
    rmdir "$probe/rank0" "$probe"
    echo "ok: cgroup $kind under $root"
    exit 0
    ;;
  --remove)
    tree=$(pick_tree) || exit 0
    read -r kind root <<< "$tree"
    [ -d "$root/$NAME" ] || exit 0
    for d in "$root/$NAME"/rank*; do [ -d "$d" ] && rmdir "$d"; done
    rmdir "$root/$NAME"
    exit 0
    ;;
  "" | -h | --help)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac

rank="${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${PMI_RANK:-0}}}"
if [[ ",${LOWSYNC_SLOW_RANKS:-1}," == *",$rank,"* ]]; then
  if [ "$MODE" = duty ]; then
    # The helper, compiled once per source version (a rank compiling it writes a file of its own
    # and renames it, so that ranks starting together never run a half-written one).
    duty="${TMPDIR:-/tmp}/lowsync_duty_cycle_$(cksum < "$HERE/duty_cycle.c" | cut -d' ' -f1)"
    if [ ! -x "$duty" ]; then
      cc -O2 -o "$duty.$$" "$HERE/duty_cycle.c" || { echo "slow_rank.sh: rank $rank: cannot compile $HERE/duty_cycle.c" >&2; exit 1; }
      mv -f "$duty.$$" "$duty"
    fi
    "$duty" "${LOWSYNC_SLOW_PERCENT:-50}" "$PERIOD_US" $$ < /dev/null &  # $$: this shell, then (exec) the program
    exec "$@"
  fi
  [ "$MODE" = quota ] || { echo "slow_rank.sh: LOWSYNC_SLOW_MODE is '$MODE'; expected quota or duty" >&2; exit 1; }
  # Failing loudly beats running unthrottled: a benchmark would report a slow rank that is not.
  if ! tree=$(pick_tree); then echo "slow_rank.sh: rank $rank: $tree" >&2; exit 1; fi
  read -r kind root <<< "$tree"
  dir="$root/$NAME/rank$rank"
  make_group "$kind" "$dir" "${LOWSYNC_SLOW_PERCENT:-50}"
  echo $$ > "$dir/cgroup.procs"  # this shell, then (exec) the program and every thread it starts
fi
exec "$@"
