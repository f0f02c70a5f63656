#!/usr/bin/env python3
"""The run report's bytes on the wire (mpi_comm/wire_bytes.h) against the bytes that really cross
the network: wire_probe does all-reduces through lowsync's Communicator under Open MPI's TCP
transport inside a private network namespace (unshare -n: its loopback device carries this run's
traffic only), and the loopback's transmitted-bytes counter, less a run without all-reduces (MPI
start-up and shut-down), must match the counters' sum over ranks within 10% (TCP/IP headers add
~1-5% at these message sizes). Covers ring, segmented ring, recursive doubling and Rabenseifner,
and a group whose size is not a power of two. Needs root (network namespaces); else skipped (77).
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mpi_util import ENV, check, finish  # noqa: E402

PROBE = os.path.join(os.path.dirname(os.environ.get("LOWSYNC_BIN", "build/lowsync")), "tests", "wire_probe")
SKIP = 77
REPS = 100
# Inside the namespace: bring its loopback up, run the probe over TCP on it, print lo's tx bytes
# before and after, and the probe's own figure.
SCRIPT = r"""
ip link set lo up
tx() { awk '/lo:/ {print $10}' /proc/net/dev; }
a=$(tx)
mpirun --oversubscribe -np "$1" --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo \
  "$2" "$3" "$4"
b=$(tx)
echo "$a $b"
"""


def measure(np_, floats, reps):
    """(bytes lo carried, bytes the counters say) for one run."""
    p = subprocess.run(["unshare", "-n", "bash", "-c", SCRIPT, "probe", str(np_), PROBE, str(floats), str(reps)],
                       env=ENV, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        sys.exit(f"wire_probe at np {np_} failed:\n{p.stdout}\n{p.stderr}")
    lines = p.stdout.split()
    counted, before, after = float(lines[0]), int(lines[1]), int(lines[2])
    return after - before, counted


def main():
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        print("skipped: needs root for a private network namespace (unshare -n)")
        sys.exit(SKIP)
    # message bytes -> Open MPI 4.1 tuned's choice: 3 KiB recursive doubling; 6000 B ring (np 2-3);
    # 96 KiB segmented ring (np 2-3) or Rabenseifner (np 4); 1 MiB Rabenseifner.
    for np_ in (2, 3, 4):
        for message in (3072, 6000, 98304, 1 << 20):
            floats = message // 4
            base, _ = measure(np_, floats, 0)
            carried, counted = measure(np_, floats, REPS)
            measured = carried - base
            check(f"np {np_}, {message} B all-reduce x {REPS}", abs(measured - counted) <= 0.10 * counted,
                  f"lo carried {measured / (REPS * np_ * message):.3f} x message per rank, counters say "
                  f"{counted / (REPS * np_ * message):.3f}")
    finish("mpi_wire_bytes")


if __name__ == "__main__":
    main()
