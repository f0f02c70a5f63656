#pragma once
#include <string>

#include "io/job_config.h"

namespace lowsync {

// `lowsync plan JOB.yaml [--out plan.yaml]` under mpirun: plans the job for this world (reading
// plan.profile, or profiling first), prints every candidate's prediction with the choice marked,
// and writes the chosen plan for `parallel.plan` (and, when asked, every candidate as JSON). Needs the model's config.json and weights' shapes
// only; the input is read, when present, for its mean prompt length.
void plan_job(const JobConfig& job, const std::string& out_path, const std::string& candidates_json);

}  // namespace lowsync
