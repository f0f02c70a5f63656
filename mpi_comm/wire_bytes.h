#pragma once
// Bytes a rank puts on the wire for a collective, as opposed to the message it hands to MPI: an
// all-reduce of an n-byte message over P ranks sends 2 (P-1)/P x n per rank by ring or
// Rabenseifner, log2(P) x n by recursive doubling. Which one runs is Open MPI's choice; lowsync
// assumes the `tuned` component's fixed decision of Open MPI 4.1 (coll_tuned_decision_fixed.c,
// commutative operations: sums), the default on the Open MPI this project builds with. Means over
// the group's ranks: with P not a power of two the ranks outside the largest power of two send
// more than the others. tests/mpi/test_wire_bytes.py checks these figures against the bytes that
// cross a private loopback device under Open MPI's TCP transport.
#include <cstdint>

namespace lowsync {

enum class AllReduceAlgorithm { Ring, SegmentedRing, RecursiveDoubling, Rabenseifner };

// Open MPI 4.1 tuned's fixed choice for a commutative all-reduce of `bytes` over `ranks` ranks.
AllReduceAlgorithm open_mpi_allreduce_algorithm(int ranks, int64_t bytes);
const char* algorithm_name(AllReduceAlgorithm a);  // "ring", "segmented ring", ...

// Mean bytes one rank sends for an all-reduce of a `bytes`-byte message (0 for one rank).
double allreduce_wire_bytes(int ranks, int64_t bytes);

// The same for collectives whose traffic is the same whatever the algorithm (every rank must
// receive what it lacks, nothing twice): all-gather of `bytes` per rank: (P-1) x bytes;
// reduce-scatter of a `bytes` message: (P-1)/P x bytes; broadcast of `bytes`: (P-1)/P x bytes.
double allgather_wire_bytes(int ranks, int64_t bytes_per_rank);
double reduce_scatter_wire_bytes(int ranks, int64_t bytes);
double broadcast_wire_bytes(int ranks, int64_t bytes);

}  // namespace lowsync
