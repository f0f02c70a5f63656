// bench_sync_probe: one model sync alone (Communicator::all_reduce with each parallel.sync_dtype),
// without the model's compute, at a decode step's message sizes (rows x hidden values): wall
// seconds per sync (the slowest rank's; min and median over TRIALS trials of CALLS back-to-back
// syncs, the trials taking turns over every setting)
// and bytes on the wire per sync and rank (the Communicator's counters). Under mpirun, e.g. on the
// emulated cluster:
//   bench/emulated_cluster.sh mpirun 1 build/bench/bench_sync_probe HIDDEN ROWS,.. CALLS TRIALS
//   bench/emulated_cluster.sh mpirun 1 build/bench/bench_sync_probe 576 1,16,64 20 9
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
    const std::vector<lowsync::SyncDType> dtypes = {lowsync::SyncDType::F32, lowsync::SyncDType::BF16,
                                                    lowsync::SyncDType::Q8};
    // Per (rows, dtype): seconds per sync of each trial, and the wire bytes counted.
    std::vector<std::vector<double>> seconds(rows.size() * dtypes.size());
    std::vector<double> wire(seconds.size(), 0);
    // Trials take turns over every setting (interleaved rounds: a noisy moment hits all alike).
    for (int t = -1; t < trials; ++t)  // t = -1: warm-up (connections, buffers), not kept
      for (size_t ri = 0; ri < rows.size(); ++ri)
        for (size_t di = 0; di < dtypes.size(); ++di) {
          const int64_t n = int64_t(rows[ri]) * hidden;
          std::vector<float> x(n), partial(n);
          for (int64_t i = 0; i < n; ++i) partial[i] = float((i * 7919 + w.rank() * 104729) % 2001 - 1000) * 1e-3f;
          const double wire0 = w.counters().wire_bytes;
          w.barrier();
          const double t0 = MPI_Wtime();
          for (int c = 0; c < calls; ++c) {
            x = partial;
            w.all_reduce(x.data(), n, dtypes[di]);
          }
          double s = (MPI_Wtime() - t0) / calls;
          MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);  // the slowest rank's
          if (t < 0) continue;
          seconds[ri * dtypes.size() + di].push_back(s);
          wire[ri * dtypes.size() + di] = (w.counters().wire_bytes - wire0) / calls;
        }
    std::string out = "{\"ranks\": " + std::to_string(w.size()) + ", \"hidden\": " + std::to_string(hidden) +
                      ", \"calls\": " + std::to_string(calls) + ", \"trials\": " + std::to_string(trials) + ", \"syncs\": [";
    for (size_t ri = 0; ri < rows.size(); ++ri)
      for (size_t di = 0; di < dtypes.size(); ++di) {
        std::vector<double>& s = seconds[ri * dtypes.size() + di];
        std::sort(s.begin(), s.end());
        const int64_t n = int64_t(rows[ri]) * hidden;
        const lowsync::SyncDType d = dtypes[di];
        const char* way = d == lowsync::SyncDType::F32
                              ? lowsync::algorithm_name(lowsync::open_mpi_allreduce_algorithm(w.size(), n * 4))
                              : lowsync::algorithm_name(lowsync::compressed_allreduce_algorithm(w.size(), n, d));
        char line[320];
        std::snprintf(line, sizeof line,
                      "%s\n  {\"rows\": %d, \"dtype\": \"%s\", \"way\": \"%s\", \"ms_per_sync_min\": %.4f, "
                      "\"ms_per_sync_median\": %.4f, \"wire_bytes\": %.0f}",
                      ri + di == 0 ? "" : ",", rows[ri], lowsync::sync_dtype_name(d), way, s.front() * 1e3,
                      s[s.size() / 2] * 1e3, wire[ri * dtypes.size() + di]);
        out += line;
      }
    if (w.rank() == 0) std::printf("%s\n]}\n", out.c_str());
  }
  MPI_Finalize();
  return 0;
}
