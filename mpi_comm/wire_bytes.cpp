#include "mpi_comm/wire_bytes.h"

namespace lowsync {

AllReduceAlgorithm open_mpi_allreduce_algorithm(int ranks, int64_t bytes) {
  using A = AllReduceAlgorithm;
  // Open MPI 4.1, ompi_coll_tuned_allreduce_intra_dec_fixed, the commutative branch, row by row.
  if (ranks < 4) {
    if (bytes < 8) return A::Ring;
    if (bytes < 4096) return A::RecursiveDoubling;
    if (bytes < 8192) return A::Ring;
    if (bytes < 16384) return A::RecursiveDoubling;
    if (bytes < 65536) return A::Ring;
    if (bytes < 262144) return A::SegmentedRing;
    return A::Rabenseifner;
  }
  if (ranks < 8) return bytes < 16 ? A::Ring : bytes < 8192 ? A::RecursiveDoubling : A::Rabenseifner;
  if (ranks < 16) return bytes < 8192 ? A::RecursiveDoubling : A::Rabenseifner;
  if (ranks < 32) return bytes < 64 ? A::SegmentedRing : bytes < 4096 ? A::RecursiveDoubling : A::Rabenseifner;
  if (ranks < 64) return bytes < 128 ? A::SegmentedRing : A::Rabenseifner;
  if (ranks < 128) return bytes < 262144 ? A::RecursiveDoubling : A::Rabenseifner;
  // Larger groups also use the nonoverlapping (reduce + broadcast) algorithm for small messages;
  // lowsync's groups are far smaller, so those rows are folded into recursive doubling here.
  if (ranks < 256) return bytes < 262144 ? A::RecursiveDoubling : A::Rabenseifner;
  return bytes < 16384 ? A::RecursiveDoubling : A::Rabenseifner;
}

const char* algorithm_name(AllReduceAlgorithm a) {
  switch (a) {
    case AllReduceAlgorithm::Ring: return "ring";
    case AllReduceAlgorithm::SegmentedRing: return "segmented ring";
    case AllReduceAlgorithm::RecursiveDoubling: return "recursive doubling";
    case AllReduceAlgorithm::Rabenseifner: return "rabenseifner";
  }
  return "?";
}

double allreduce_wire_bytes(int ranks, int64_t bytes) {
  if (ranks <= 1) return 0;
  const double P = ranks, n = static_cast<double>(bytes);
  int p2 = 1, steps = 0;  // the largest power of two <= P, and its log2
  while (2 * p2 <= ranks) p2 *= 2, ++steps;
  const double extra = ranks - p2;  // ranks folded into a partner before and after the power-of-two part
  switch (open_mpi_allreduce_algorithm(ranks, bytes)) {
    case AllReduceAlgorithm::Ring:
    case AllReduceAlgorithm::SegmentedRing:
      return 2 * (P - 1) / P * n;  // reduce-scatter then all-gather round the ring, n/P per step
    case AllReduceAlgorithm::RecursiveDoubling:
      // log2(p2) exchanges of the whole message; each extra rank hands its message to a partner
      // and gets the result back.
      return (p2 * steps * n + 2 * extra * n) / P;
    case AllReduceAlgorithm::Rabenseifner:
      // Recursive halving then doubling: 2 (p2-1)/p2 x n per rank of the power-of-two part. Each
      // extra rank and its partner first swap halves (n/2 each), the extra rank hands its reduced
      // half over (n/2) and gets the result back (n): 2.5 n per extra rank.
      return (2 * (p2 - 1) * n + 2.5 * extra * n) / P;
  }
  return 0;
}

double allgather_wire_bytes(int ranks, int64_t bytes_per_rank) {
  return ranks <= 1 ? 0 : (ranks - 1) * static_cast<double>(bytes_per_rank);
}

double reduce_scatter_wire_bytes(int ranks, int64_t bytes) {
  return ranks <= 1 ? 0 : (ranks - 1) * static_cast<double>(bytes) / ranks;
}

double broadcast_wire_bytes(int ranks, int64_t bytes) {
  return ranks <= 1 ? 0 : (ranks - 1) * static_cast<double>(bytes) / ranks;
}

int64_t compressed_chunk(int ranks, int64_t n, SyncDType d) {
  const int64_t grain = sync_grain(d);
  return (n + ranks * grain - 1) / (ranks * grain) * grain;
}

namespace {
double gather_wire_bytes(int ranks, int64_t n, SyncDType d) {
  return allgather_wire_bytes(ranks, encoded_bytes(d, sync_padded(d, n)));
}
double reduce_scatter_way_wire_bytes(int ranks, int64_t n, SyncDType d) {
  const int64_t chunk = compressed_chunk(ranks, n, d);
  return double(ranks - 1) * encoded_bytes(d, chunk) + allgather_wire_bytes(ranks, encoded_bytes(SyncDType::BF16, chunk));
}
}  // namespace

CompressedAllReduce compressed_allreduce_algorithm(int ranks, int64_t n, SyncDType d) {
  const double extra = gather_wire_bytes(ranks, n, d) - reduce_scatter_way_wire_bytes(ranks, n, d);
  return extra <= kSyncGatherExtraBytes ? CompressedAllReduce::Gather : CompressedAllReduce::ReduceScatter;
}

const char* algorithm_name(CompressedAllReduce a) {
  return a == CompressedAllReduce::Gather ? "gather" : "reduce-scatter";
}

int64_t compressed_allreduce_message_bytes(int ranks, int64_t n, SyncDType d) {
  return compressed_allreduce_algorithm(ranks, n, d) == CompressedAllReduce::Gather
             ? encoded_bytes(d, sync_padded(d, n))
             : encoded_bytes(d, compressed_chunk(ranks, n, d) * ranks);
}

double compressed_allreduce_wire_bytes(int ranks, int64_t n, SyncDType d) {
  if (ranks <= 1) return 0;
  return compressed_allreduce_algorithm(ranks, n, d) == CompressedAllReduce::Gather
             ? gather_wire_bytes(ranks, n, d)
             : reduce_scatter_way_wire_bytes(ranks, n, d);
}

}  // namespace lowsync
