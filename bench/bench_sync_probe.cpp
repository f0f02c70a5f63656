// bench_sync_probe: one model sync alone (Communicator::all_reduce with each parallel.sync_dtype),
// without the model's compute, at a decode step's message sizes (rows x hidden values): wall
// seconds per sync (the slowest rank's; median of --trials trials of --calls back-to-back syncs)
// and bytes on the wire per sync and rank (the Communicator's counters). Under mpirun, e.g. on the
// emulated cluster:
//   bench/emulated_cluster.sh mpirun 1 build/bench/bench_sync_probe 576 1,16,64 60 5
// Prints one JSON object (rank 0).
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "mpi_comm/communicator.h"
#include "mpi_comm/wire_bytes.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  const int hidden = argc > 1 ? std::atoi(argv[1]) : 576;
  std::vector<int> rows;
  std::stringstream list(argc > 2 ? argv[2] : "1,16,64");
  for (std::string r; std::getline(list, r, ',');) rows.push_back(std::atoi(r.c_str()));
  const int calls = argc > 3 ? std::atoi(argv[3]) : 60, trials = argc > 4 ? std::atoi(argv[4]) : 5;
  {
    lowsync::Communicator w(MPI_COMM_WORLD, "world");
    std::string out = "{\"ranks\": " + std::to_string(w.size()) + ", \"hidden\": " + std::to_string(hidden) +
                      ", \"calls\": " + std::to_string(calls) + ", \"trials\": " + std::to_string(trials) + ", \"syncs\": [";
    bool first = true;
    for (int r : rows)
      for (lowsync::SyncDType d : {lowsync::SyncDType::F32, lowsync::SyncDType::BF16, lowsync::SyncDType::Q8}) {
        const int64_t n = int64_t(r) * hidden;
        std::vector<float> x(n), partial(n);
        for (int64_t i = 0; i < n; ++i) partial[i] = float((i * 7919 + w.rank() * 104729) % 2001 - 1000) * 1e-3f;
        for (int i = 0; i < 3; ++i) {  // warm-up: connections, buffers
          x = partial;
          w.all_reduce(x.data(), n, d);
        }
        std::vector<double> per_call;
        const double wire0 = w.counters().wire_bytes;
        for (int t = 0; t < trials; ++t) {
          w.barrier();
          const double t0 = MPI_Wtime();
          for (int c = 0; c < calls; ++c) {
            x = partial;
            w.all_reduce(x.data(), n, d);
          }
          double s = (MPI_Wtime() - t0) / calls;
          MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
          per_call.push_back(s);
        }
        std::sort(per_call.begin(), per_call.end());
        const double wire = (w.counters().wire_bytes - wire0) / (double(calls) * trials);
        const char* way = d == lowsync::SyncDType::F32
                              ? lowsync::algorithm_name(lowsync::open_mpi_allreduce_algorithm(w.size(), n * 4))
                              : lowsync::algorithm_name(lowsync::compressed_allreduce_algorithm(w.size(), n, d));
        char line[256];
        std::snprintf(line, sizeof line,
                      "%s\n  {\"rows\": %d, \"dtype\": \"%s\", \"way\": \"%s\", \"ms_per_sync\": %.4f, \"wire_bytes\": %.0f}",
                      first ? "" : ",", r, lowsync::sync_dtype_name(d), way, per_call[per_call.size() / 2] * 1e3, wire);
        out += line;
        first = false;
      }
    if (w.rank() == 0) std::printf("%s\n]}\n", out.c_str());
  }
  MPI_Finalize();
  return 0;
}
