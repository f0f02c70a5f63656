#include "planning/spd_checkpoint.h"

#include "io/error.h"

namespace lowsync {

namespace {

std::string list(const std::vector<int>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

void check_spd_checkpoint(const ModelConfig& model, const Plan& plan, const std::string& where) {
  const SpdCheckpoint& want = model.spd_checkpoint;
  if (!want.present()) return;
  std::vector<int> drop, heads, ffn;
  for (int l = 0; l < plan.layers(); ++l)
    if (plan.spd_drop[l]) drop.push_back(l);
  for (const LayerShare& s : plan.shares) {
    heads.push_back(s.heads.count);
    ffn.push_back(s.ffn.count);
  }
  const bool tensor = plan.split == ReplicaSplit::Tensor;
  if (tensor && plan.group == want.tp && drop == want.drop && heads == want.heads && ffn == want.ffn) return;
  std::string has = tensor ? "tp = " + std::to_string(plan.group) + ", parallel.spd.drop " + list(drop) + ", heads " +
                                 list(heads) + ", FFN columns " + list(ffn)
                           : std::string("block parallelism");
  throw UserError(where + ": " + model.dir + " was recovered for Sync-Point Drop at tp = " + std::to_string(want.tp) +
                  " with parallel.spd.drop " + list(want.drop) + " (heads " + list(want.heads) + ", FFN columns " +
                  list(want.ffn) + ", config.json 'lowsync_spd') and runs only so; this plan has " + has);
}

}  // namespace lowsync
