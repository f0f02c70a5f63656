#include "mpi_comm/parallel_groups.h"

namespace lowsync {

ParallelGroups ParallelGroups::make(int tp_size, int dp_size) {
  ParallelGroups g;
  g.world = Communicator(MPI_COMM_WORLD, "world");
  if (g.world.size() != tp_size * dp_size)
    throw MpiError("world has " + std::to_string(g.world.size()) + " ranks, expected tp x dp = " +
                   std::to_string(tp_size * dp_size));
  g.replica = g.world.rank() / tp_size;
  g.tp = g.world.split(g.replica, g.world.rank(), "tp");
  g.tp_control = g.world.split(g.replica, g.world.rank(), "tp_control");
  g.dp = g.world.split(g.world.rank() % tp_size, g.world.rank(), "dp");
  return g;
}

}  // namespace lowsync
