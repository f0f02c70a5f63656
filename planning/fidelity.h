#pragma once
// A decoupled checkpoint's fidelity.yaml (python/decoupled/fidelity.py): how close it was measured
// to the model it was made from (mean cosine of sentence embeddings for encoders, mean next-token
// KL and top-1 agreement for decoders), on which texts, and which model that was (its config.json
// digest), so that the planner can hold it to the job's accuracy budget (parallel.decoupled.budget).
#include <string>

namespace lowsync {

struct Fidelity {
  std::string base_path;    // the model it was measured against, as written
  std::string base_digest;  // config_digest of that model (planning/plan.h)
  // Measured against the base; NaN when not measured (an encoder has no KL, a decoder no cosine).
  double mean_cosine, mean_kl, top1;
  int rows = 0;             // held-out texts
  std::string texts;        // what they were

  Fidelity();
  // The file in a checkpoint directory ("fidelity.yaml").
  static std::string path_in(const std::string& checkpoint_dir);
  static bool exists_in(const std::string& checkpoint_dir);
  // UserError naming the file and what was expected.
  static Fidelity load(const std::string& path);
  // "mean KL 0.012, top-1 0.74 on 8 rows" or "mean cosine 0.981 on 256 rows".
  std::string describe() const;
};

}  // namespace lowsync
