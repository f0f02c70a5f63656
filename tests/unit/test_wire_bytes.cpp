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

}  // namespace
}  // namespace lowsync
