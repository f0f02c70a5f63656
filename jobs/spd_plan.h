#pragma once
// Which layers drop their attention sync, from `parallel.spd` (a list, or a calibration file and a budget).
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"

namespace lowsync {

std::vector<bool> resolve_spd_drop(const JobConfig& job, const ModelConfig& model);

}  // namespace lowsync
