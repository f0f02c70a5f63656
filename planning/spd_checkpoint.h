#pragma once
// A checkpoint recovered for Sync-Point Drop (config.json 'lowsync_spd') runs only under the split
// it was recovered for: the same tensor-parallel ranks, the same shares of heads and FFN columns,
// the same dropped syncs. Its distilled blocks compute something else under any other plan.
#include <string>

#include "io/model_config.h"
#include "planning/plan.h"

namespace lowsync {

// UserError "<where>: <model>: ..." naming what the checkpoint needs and what the plan has.
void check_spd_checkpoint(const ModelConfig& model, const Plan& plan, const std::string& where);

}  // namespace lowsync
