// Bytes on the wire per rank (mpi_comm/wire_bytes.h): Open MPI 4.1 tuned's algorithm choice at the
// message sizes lowsync's syncs have, and each algorithm's traffic worked out by hand.
#include <gtest/gtest.h>

#include "mpi_comm/wire_bytes.h"

namespace lowsync {
namespace {

TEST(WireBytes, OneRankSendsNothing) { EXPECT_EQ(allreduce_wire_bytes(1, 1 << 20), 0); }

TEST(WireBytes, TwoRanks) {
  // A decode step's sync of 1 row x hidden 768 (3 KiB): recursive doubling, one exchange.
  EXPECT_EQ(open_mpi_allreduce_algorithm(2, 3072), AllReduceAlgorithm::RecursiveDoubling);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(2, 3072), 3072);
  // 32 rows (96 KiB): segmented ring, 2 (P-1)/P = 1 message.
  EXPECT_EQ(open_mpi_allreduce_algorithm(2, 98304), AllReduceAlgorithm::SegmentedRing);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(2, 98304), 98304);
  // A prefill of 1024 rows (3 MiB): Rabenseifner, also 1 message at P = 2.
  EXPECT_EQ(open_mpi_allreduce_algorithm(2, 3 << 20), AllReduceAlgorithm::Rabenseifner);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(2, 3 << 20), 3 << 20);
}

TEST(WireBytes, FourRanks) {
  // Small: recursive doubling, log2(4) = 2 whole messages.
  EXPECT_EQ(open_mpi_allreduce_algorithm(4, 3072), AllReduceAlgorithm::RecursiveDoubling);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(4, 3072), 2 * 3072);
  // From 8 KiB: Rabenseifner, 2 x 3/4 = 1.5 messages.
  EXPECT_EQ(open_mpi_allreduce_algorithm(4, 98304), AllReduceAlgorithm::Rabenseifner);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(4, 98304), 1.5 * 98304);
}

TEST(WireBytes, ThreeRanksFoldOneIntoAPartner) {
  // p2 = 2: two ranks exchange once (n each), the third sends n out and its partner n back:
  // (2 x 1 x n + 2 x 1 x n) / 3.
  EXPECT_EQ(open_mpi_allreduce_algorithm(3, 3072), AllReduceAlgorithm::RecursiveDoubling);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(3, 3072), 4.0 * 3072 / 3);
  // Ring at 3 ranks (4-8 KiB): 2 x 2/3 messages.
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(3, 6000), 4.0 * 6000 / 3);
  // Rabenseifner from 256 KiB: the pair's swap of halves, the handover and the result back
  // (2.5 n) on top of the two-rank part's 2 x 1/2 x n each: (2 n + 2.5 n) / 3.
  EXPECT_EQ(open_mpi_allreduce_algorithm(3, 1 << 20), AllReduceAlgorithm::Rabenseifner);
  EXPECT_DOUBLE_EQ(allreduce_wire_bytes(3, 1 << 20), 1.5 * (1 << 20));
}

TEST(WireBytes, AlgorithmIndependentCollectives) {
  EXPECT_DOUBLE_EQ(allgather_wire_bytes(4, 100), 300);
  EXPECT_DOUBLE_EQ(reduce_scatter_wire_bytes(4, 400), 300);
  EXPECT_DOUBLE_EQ(broadcast_wire_bytes(4, 400), 300);
}

// Compressed syncs (parallel.sync_dtype), worked by hand for SmolLM2's hidden 576 at 4 ranks: q8
// is 39 bytes per 32 values, bf16 sums 2 bytes per value.
TEST(WireBytes, CompressedSyncWays) {
  const SyncDType q8 = SyncDType::Q8;
  // 1 row: 18 blocks = 702 bytes to each of 3 ranks.
  EXPECT_EQ(compressed_allreduce_algorithm(4, 576, q8), CompressedAllReduce::Gather);
  EXPECT_EQ(compressed_allreduce_message_bytes(4, 576, q8), 702);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(4, 576, q8), 3 * 702);
  // 4 rows: gather 3 x 2808 = 8424; the other way 3 x 702 (chunks of 576) + 3 x 1152 (bf16 sums)
  // = 5562; 2862 more is within kSyncGatherExtraBytes: gather.
  EXPECT_EQ(compressed_allreduce_algorithm(4, 4 * 576, q8), CompressedAllReduce::Gather);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(4, 4 * 576, q8), 8424);
  // 16 rows: gather 3 x 11232 = 33696; the other way 3 x 2808 (chunks of 2304) + 3 x 4608 = 22248.
  EXPECT_EQ(compressed_allreduce_algorithm(4, 16 * 576, q8), CompressedAllReduce::ReduceScatter);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(4, 16 * 576, q8), 22248);
  // 64 rows: gather would send 134784, the other way 3 x 11232 + 3 x 18432 = 88992.
  EXPECT_EQ(compressed_allreduce_algorithm(4, 64 * 576, q8), CompressedAllReduce::ReduceScatter);
  EXPECT_EQ(compressed_allreduce_message_bytes(4, 64 * 576, q8), 44928);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(4, 64 * 576, q8), 88992);
  // Two ranks: gathering sends the one partial (44928), less than the other way (22464 + 36864).
  EXPECT_EQ(compressed_allreduce_algorithm(2, 64 * 576, q8), CompressedAllReduce::Gather);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(2, 64 * 576, q8), 44928);
  // A size that is not a multiple of a block: padded to one (2 blocks).
  EXPECT_EQ(compressed_allreduce_message_bytes(4, 33, q8), 78);
  EXPECT_DOUBLE_EQ(compressed_allreduce_wire_bytes(1, 576, q8), 0);
}

}  // namespace
}  // namespace lowsync
