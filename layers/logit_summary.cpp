#include "layers/logit_summary.h"

#include <cmath>
#include <limits>

namespace lowsync {

double LogitSummary::logprob(double logit) const { return logit - max - std::log(sum_exp); }

// Non-finite values travel as bad = -(id + 2) for a NaN, id for an infinity, -1 for none; a target
// outside the slice as NaN. Token ids are far below 2^53, so doubles carry them exactly.
void LogitSummary::pack(double* out) const {
  out[0] = max;
  out[1] = double(argmax);
  out[2] = sum_exp;
  out[3] = has_target ? target : std::numeric_limits<double>::quiet_NaN();
  out[4] = bad < 0 ? -1.0 : bad_is_nan ? -double(bad + 2) : double(bad);
}

LogitSummary LogitSummary::unpack(const double* in) {
  LogitSummary s;
  s.max = in[0];
  s.argmax = static_cast<int64_t>(in[1]);
  s.sum_exp = in[2];
  s.has_target = !std::isnan(in[3]);
  if (s.has_target) s.target = in[3];
  if (in[4] >= 0) {
    s.bad = static_cast<int64_t>(in[4]);
  } else if (in[4] < -1) {
    s.bad = static_cast<int64_t>(-in[4]) - 2;
    s.bad_is_nan = true;
  }
  return s;
}

LogitSummary summarize_logits(const float* l, Span slice, int64_t target) {
  LogitSummary s;
  const int n = slice.count;
  for (int v = 0; v < n; ++v)
    if (!(std::fabs(l[v]) <= std::numeric_limits<float>::max())) {
      s.bad = slice.begin + v;
      s.bad_is_nan = std::isnan(l[v]);
      return s;
    }
  // In double: the log-sum-exp over a large vocabulary is where fp32 loses digits.
  int best = 0;
  for (int v = 1; v < n; ++v)
    if (l[v] > l[best]) best = v;
  s.max = l[best];
  s.argmax = slice.begin + best;
  for (int v = 0; v < n; ++v) s.sum_exp += std::exp(double(l[v]) - s.max);
  if (target >= slice.begin && target < slice.end()) {
    s.target = l[target - slice.begin];
    s.has_target = true;
  }
  return s;
}

LogitSummary merge_summaries(const std::vector<LogitSummary>& slices) {
  if (slices.size() == 1) return slices[0];
  LogitSummary s;
  for (const LogitSummary& p : slices)  // the first non-finite value of the row
    if (p.bad >= 0 && s.bad < 0) {
      s.bad = p.bad;
      s.bad_is_nan = p.bad_is_nan;
    }
  if (s.bad >= 0) return s;
  s.max = slices[0].max;
  s.argmax = slices[0].argmax;
  for (const LogitSummary& p : slices)  // strictly larger: at ties the earlier slice's (lower) id stays
    if (p.max > s.max) {
      s.max = p.max;
      s.argmax = p.argmax;
    }
  for (const LogitSummary& p : slices) {
    s.sum_exp += p.sum_exp * std::exp(p.max - s.max);
    if (p.has_target) {
      s.target = p.target;
      s.has_target = true;
    }
  }
  return s;
}

}  // namespace lowsync
