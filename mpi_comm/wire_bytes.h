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

#include "mpi_comm/sync_codec.h"

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

// A compressed sync (parallel.sync_dtype bf16 or q8; Communicator::all_reduce(float*, n, SyncDType))
// of n values over P ranks takes one of two ways, chosen by size:
//  - Gather, for small messages (a decode step's): every rank's encoded partial (E bytes) goes to
//    every rank by recursive doubling, log2(P) rounds (P a power of two; MPI_Allgather otherwise),
//    and each rank sums the P decoded partials in fp32 in rank order. Every partial is rounded
//    once; sends (P-1) E per rank.
//  - ReduceScatter, for large ones (a prefill's): an all-to-all of encoded chunks (each partial
//    rounded once), each rank sums its chunk in fp32 in rank order, and the sums travel as bf16
//    (rounded once more, relative 2^-8) in an all-gather; sends (P-1)/P (E + E_bf16) per rank, in
//    1 + log2(P) rounds or more.
// Gather sends more bytes but saves a round or two: it is taken while its extra bytes,
// (P-1) E - (P-1)/P (E + E_bf16), stay below kSyncGatherExtraBytes, about what one round costs at
// 100 Mbit/s with 500 us one-way (6.25 KB). Measured there at 4 ranks (bench_sync_probe, best of 9
// interleaved trials): a 16-row q8 sync took 3.8 ms gathered (11 KB more) where a bf16 one of 27.6
// KB took 2.7 ms the other way, so gathering pays only for a few rows.
enum class CompressedAllReduce { Gather, ReduceScatter };
constexpr double kSyncGatherExtraBytes = 6144;

CompressedAllReduce compressed_allreduce_algorithm(int ranks, int64_t n, SyncDType d);
const char* algorithm_name(CompressedAllReduce a);  // "gather", "reduce-scatter"
// Values per rank's chunk in the ReduceScatter way (a multiple of the dtype's grain).
int64_t compressed_chunk(int ranks, int64_t n, SyncDType d);
// The message (bytes this rank hands over: its encoded partial) and the bytes it sends on the wire.
int64_t compressed_allreduce_message_bytes(int ranks, int64_t n, SyncDType d);
double compressed_allreduce_wire_bytes(int ranks, int64_t n, SyncDType d);

}  // namespace lowsync
