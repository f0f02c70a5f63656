#pragma once
// The result of `lowsync calibrate` (calibration.yaml): how much each layer's Sync-Point Drop
// changes the model's next-token distribution when dropped alone, the layers from least to most
// sensitive, and the measured deviation of dropping each prefix of that order together.
#include <string>
#include <vector>

namespace lowsync {

struct LayerSensitivity {
  int layer = 0;
  double kl = 0;    // mean next-token KL(full TP || this layer dropped)
  double top1 = 1;  // fraction of positions whose argmax agrees with full TP
};

// The SPD paper's classes of a layer by its progressive perplexity increase (calibrate.sensitive,
// calibrate.extreme): dropped as it is, recovered by distillation, or by head grouping first
// (python/spd_recover.py does the recovering).
enum class SpdClass { Insensitive, Sensitive, Extreme };
const char* spd_class_name(SpdClass c);

// One step of the progressive measurement: layer `layer` dropped with every later layer already
// dropped; perplexities of the calibration prompts before and after, increase = after / before - 1.
struct ProgressiveStep {
  int layer = 0;
  double ppl_before = 0, ppl_after = 0, increase = 0;
  SpdClass cls = SpdClass::Insensitive;
};

struct Calibration {
  std::string model;
  int tp = 1;
  std::string prompts;
  int rows = 0, tokens = 0;
  std::vector<LayerSensitivity> layers;  // by layer index, each dropped alone
  std::vector<ProgressiveStep> progressive;  // calibrate.method progressive only, by layer index
  double sensitive = 0, extreme = 0;         // its class thresholds
  std::vector<int> order;                // least sensitive first (KL alone, or the progressive increase)
  std::vector<LayerSensitivity> prefix;  // prefix[i]: the first i+1 layers of `order` dropped together
  double max_kl = 0, min_top1 = 0;       // the budget used for `drop`
  std::vector<int> drop;                 // the longest prefix within the budget
  // Compressed syncs (parallel.sync_dtype), no layer dropped: [0] bf16, [1] q8 (layer unused).
  // Empty in files from before they were measured.
  std::vector<LayerSensitivity> sync_dtypes;

  // The longest prefix of `order` whose measured deviation is within the budget.
  std::vector<int> drop_within(double max_kl, double min_top1) const;
  void save(const std::string& path) const;
  static Calibration load(const std::string& path);  // UserError naming the file / key
};

}  // namespace lowsync
