#pragma once
#include "io/job_config.h"

namespace lowsync {

// Runs a job from its YAML to its output file (the `run` subcommand), on every rank of the world.
// Setup errors are agreed by all ranks (AgreedError, printed once by rank 0); an error while
// batches run stops every rank through MPI_Abort, after a message from the rank that failed.
void run_job(const JobConfig& job, bool resume);

}  // namespace lowsync
