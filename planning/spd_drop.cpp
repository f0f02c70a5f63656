#include "planning/spd_drop.h"

#include "io/error.h"
#include "planning/calibration.h"

namespace lowsync {

std::vector<bool> resolve_spd_drop(const JobConfig& job, const ModelConfig& model, int group) {
  const SpdOptions& spd = job.parallel.spd;
  std::vector<int> layers = spd.drop;
  if (!spd.from.empty()) {
    const Calibration cal = Calibration::load(spd.from);
    if (cal.tp != group)
      throw UserError(spd.from + ": calibrated with tp = " + std::to_string(cal.tp) + " but the plan has tp = " +
                      std::to_string(group) + "; SPD's effect depends on the split, calibrate again");
    if (static_cast<int>(cal.layers.size()) != model.n_layers)
      throw UserError(spd.from + ": calibrated for " + std::to_string(cal.layers.size()) + " layers but " + job.model +
                      " has " + std::to_string(model.n_layers));
    layers = cal.drop_within(spd.max_kl >= 0 ? spd.max_kl : cal.max_kl, spd.min_top1 >= 0 ? spd.min_top1 : cal.min_top1);
  }
  std::vector<bool> drop(model.n_layers, false);
  for (int l : layers) {
    if (l < 0 || l >= model.n_layers)
      throw UserError(job.path + ": parallel.spd.drop names layer " + std::to_string(l) + "; the model has layers 0.." +
                      std::to_string(model.n_layers - 1));
    drop[l] = true;
  }
  return drop;
}

}  // namespace lowsync
