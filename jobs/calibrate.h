#pragma once
#include "io/job_config.h"

namespace lowsync {

// `lowsync calibrate JOB.yaml` under mpirun -np tp: measures each layer's sensitivity to Sync-Point
// Drop on the calibration prompts and writes calibrate.output (calibration.yaml).
void calibrate_spd(const JobConfig& job);

}  // namespace lowsync
