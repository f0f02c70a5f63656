#pragma once
#include <string>

#include "io/job_config.h"

namespace lowsync {

// `lowsync profile JOB.yaml --out PROFILE` under mpirun: measures every rank's compute on the job's
// model and backend and the links between ranks (planning/profiler.h), writes the profile on rank 0
// and prints a summary table. Reads only the job YAML and the model's config.json: the job's input
// and output files need not exist, and are not created.
void profile_job(const JobConfig& job, const std::string& out_path, double budget_s);

}  // namespace lowsync
