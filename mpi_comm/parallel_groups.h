#pragma once
// The grid of ranks: world = dp replicas x pp pipeline stages x group ranks (tensor- or
// block-parallel) per stage. World rank w is replica w / (pp x group), stage (w / group) % pp,
// and rank w % group inside its stage.
//   tp:       the ranks of one stage of one replica (their model syncs: TP shares or BP sub-blocks)
//   pp:       the ranks of equal group rank across the stages of one replica (activations flow here)
//   dp:       the ranks of equal stage and group rank across replicas
//   replica:  every rank of one replica, for job control (so that `tp` counts only model syncs);
//             its rank 0 (stage 0, group rank 0) is the replica's leader
#include <string>

#include "mpi_comm/communicator.h"

namespace lowsync {

struct ParallelGroups {
  Communicator world, tp, pp, dp, replica;
  int replica_index = 0, stage = 0, stages = 1;

  // group_name names `tp` in errors, traces and counters: "tp", or "bp" for a decoupled model's
  // sub-blocks (whose syncs are block-parallel, not tensor-parallel).
  static ParallelGroups make(int group_size, int pp_size, int dp_size, const std::string& group_name = "tp");
  bool is_leader() const { return replica.rank() == 0; }
  bool first_stage() const { return stage == 0; }
  bool last_stage() const { return stage == stages - 1; }
};

}  // namespace lowsync
