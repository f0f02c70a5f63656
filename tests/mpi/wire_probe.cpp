// wire_probe N REPS: REPS all-reduces of N floats over the world through lowsync's Communicator;
// rank 0 prints the bytes the counters say all ranks together put on the wire (wire_bytes summed
// over ranks). tests/mpi/test_wire_bytes.py compares that with what crossed the network.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mpi_comm/communicator.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  {
    lowsync::Communicator world(MPI_COMM_WORLD, "world");
    const int64_t n = std::atoll(argv[1]);
    const int reps = std::atoi(argv[2]);
    std::vector<float> data(n, 1.f);
    for (int r = 0; r < reps; ++r) world.all_reduce(data.data(), n);
    double mine = world.counters().wire_bytes, all = 0;
    MPI_Reduce(&mine, &all, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);  // uncounted, and the same in a 0-rep run
    if (world.rank() == 0) std::printf("%.0f\n", all);
  }
  MPI_Finalize();
  return 0;
}
