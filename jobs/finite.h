#pragma once
// Non-finite results: a NaN or an infinity in a row's logits or embedding means the model
// overflowed float32 (finite but huge weights; NaN/inf weights are refused at load). Sampling,
// log-softmax or pooling over them gives meaningless tokens, scores or vectors, so the job stops
// and names the row instead. The check reads values the task has already computed on the host.
#include <cmath>
#include <string>

#include "io/error.h"
#include "layers/model.h"

namespace lowsync {

// Throws a UserError naming `row`, `task` and `what` (which values) if v[0..n) is not all finite.
// Only the first rank of a tensor-parallel group reports: its peers hold the same values and are
// stopped by its abort, so the job prints one error line, not one per rank.
inline void require_finite(Transformer& model, const float* v, int64_t n, int64_t row, const char* task,
                           const std::string& what) {
  bool bad = false;
  for (int64_t i = 0; i < n; ++i) bad |= !(std::fabs(v[i]) <= 3.402823466e38f);
  if (!bad || model.tp().rank() != 0) return;
  int64_t i = 0;
  while (std::isfinite(v[i])) ++i;
  throw UserError(model.config().dir + ": row " + std::to_string(row) + ": task " + task + ": " +
                  (std::isnan(v[i]) ? "NaN" : "an infinity") + " in " + what + " at index " + std::to_string(i) +
                  "; expected finite values (the model overflows float32 on this row)");
}

// The same for a row's logits seen through their summary (a split head, layers/logit_summary.h):
// every rank holds the merged summary, so the first rank of the group reports as above.
inline void require_finite(Transformer& model, const LogitSummary& s, int64_t row, const char* task,
                           const std::string& what) {
  if (s.bad < 0 || model.tp().rank() != 0) return;
  throw UserError(model.config().dir + ": row " + std::to_string(row) + ": task " + task + ": " +
                  (s.bad_is_nan ? "NaN" : "an infinity") + " in " + what + " at index " + std::to_string(s.bad) +
                  "; expected finite values (the model overflows float32 on this row)");
}

}  // namespace lowsync
