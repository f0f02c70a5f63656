#pragma once
// The grid of ranks: world = dp replicas x tp ranks. World rank w is replica w / tp, tensor-parallel
// rank w % tp. `tp` joins the ranks of one replica; `dp` joins the ranks of equal tp rank across
// replicas (rank 0 of each tp group is its replica's leader).
#include "mpi_comm/communicator.h"

namespace lowsync {

struct ParallelGroups {
  Communicator world, tp, dp;
  Communicator tp_control;  // the tp ranks again, for job control, so that `tp` counts only model syncs
  int replica = 0;

  static ParallelGroups make(int tp_size, int dp_size);
  bool is_leader() const { return tp.rank() == 0; }
};

}  // namespace lowsync
