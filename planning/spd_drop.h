#pragma once
// Which layers drop their attention sync, from `parallel.spd` (a list, or a calibration file and a
// budget). A calibration is tied to the split it measured: `group` ranks of a tensor-parallel replica.
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"

namespace lowsync {

std::vector<bool> resolve_spd_drop(const JobConfig& job, const ModelConfig& model, int group);

}  // namespace lowsync
