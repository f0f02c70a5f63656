#include "mpi_comm/parallel_groups.h"

namespace lowsync {

ParallelGroups ParallelGroups::make(int group_size, int pp_size, int dp_size, const std::string& group_name) {
  ParallelGroups g;
  g.world = Communicator(MPI_COMM_WORLD, "world");
  if (g.world.size() != group_size * pp_size * dp_size)
    throw MpiError("world has " + std::to_string(g.world.size()) + " ranks, expected group x pp x dp = " +
                   std::to_string(group_size) + " x " + std::to_string(pp_size) + " x " + std::to_string(dp_size));
  const int w = g.world.rank(), per_replica = group_size * pp_size;
  g.replica_index = w / per_replica;
  g.stage = (w / group_size) % pp_size;
  g.stages = pp_size;
  const int group_rank = w % group_size;
  g.tp = g.world.split(g.replica_index * pp_size + g.stage, w, group_name);
  g.pp = g.world.split(g.replica_index * group_size + group_rank, w, "pp");
  g.dp = g.world.split(g.stage * group_size + group_rank, w, "dp");
  g.replica = g.world.split(g.replica_index, w, "replica");
  return g;
}

}  // namespace lowsync
