#pragma once
#include "io/job_config.h"

namespace lowsync {

// Runs a job from its YAML to its output file (the `run` subcommand). Throws UserError on bad input.
void run_job(const JobConfig& job, bool resume, int world_rank, int world_size);

}  // namespace lowsync
