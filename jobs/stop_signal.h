#pragma once
// Stopping a run on SIGTERM, SIGINT or SIGUSR1 without losing or damaging rows. The handler only
// records the signal (a sig_atomic_t): ranks may be inside collectives, HDF5 or BLAS, none of which
// can be interrupted safely. The work queue looks at it between batches, where the ranks agree to
// stop (WorkQueue), so no rank is left waiting in a collective another rank abandoned; rank 0 then
// writes the batches already computed, prints how far the run got and how to resume, and the job
// exits with kExitStopped.
//
// A second signal stops at once: the process ends with 128 + the signal, as if killed by it,
// except while rank 0 is writing a batch to the output; then it ends right after that batch is on
// disk, so that the file is never left half-written. Rows done stay done either way.
#include <string>

namespace lowsync {

// Exit status of a run stopped by a signal at a batch boundary: EX_TEMPFAIL, "try again later"
// (with --resume). A second signal ends the process with 128 + the signal instead.
constexpr int kExitStopped = 75;

// Installs the handlers for SIGTERM, SIGINT and SIGUSR1. `report`: this process prints the line of
// a second signal (rank 0); `job_path`: named in that line's resume command.
void install_stop_handlers(bool report, const std::string& job_path);

// 0, or the first stop signal this process received.
int stop_signal();

// "SIGTERM", "SIGINT", "SIGUSR1" (or "signal N").
std::string signal_name(int sig);

// While one lives, a second signal waits for its end to stop the process (rank 0 writing a batch).
class WritingBatch {
 public:
  WritingBatch();
  ~WritingBatch();
  WritingBatch(const WritingBatch&) = delete;
  WritingBatch& operator=(const WritingBatch&) = delete;
};

}  // namespace lowsync
