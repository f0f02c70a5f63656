#pragma once
#include "io/job_config.h"

namespace lowsync {

// Runs a job from its YAML to its output file (the `run` subcommand), on every rank of the world.
// Setup errors are agreed by all ranks (AgreedError, printed once by rank 0); an error while
// batches run stops every rank through MPI_Abort, after a message from the rank that failed.
// Returns the process's exit status: 0 when every row is done, kExitStopped (jobs/stop_signal.h)
// when a signal stopped it between batches; the same on every rank.
int run_job(const JobConfig& job, bool resume);

}  // namespace lowsync
