#pragma once
// What a row of logits says when a task needs only its argmax and its normaliser (greedy decoding,
// the log-prob of one token), computed over one rank's slice of the vocabulary and merged exactly
// across the slices of a split output head (planning/plan.h, Plan::head):
//   argmax = the first index of the largest of the slices' maxima (slices in vocabulary order),
//   log Z  = M + log sum_r S_r exp(m_r - M),  M = max_r m_r,  S_r = sum_{v in slice r} exp(l_v - m_r),
// which is log sum_v exp(l_v) regrouped (only the rounding of the double sums differs). One slice
// (the whole vocabulary) gives the same numbers, in the same order, as summing the row directly.
#include <cstdint>
#include <vector>

#include "layers/layer_share.h"

namespace lowsync {

struct LogitSummary {
  double max = 0;         // the largest logit (a float's value)
  int64_t argmax = -1;    // its token id: the first at ties, as torch.argmax
  double sum_exp = 0;     // sum of exp(logit - max)
  double target = 0;      // the logit of the row's target token (valid when has_target)
  bool has_target = false;
  int64_t bad = -1;       // the first token id whose logit is not finite (-1: none)
  bool bad_is_nan = false;

  // log p(token) = logit - max - log(sum_exp): the order score and record_logprobs always used.
  double logprob(double logit) const;
  double target_logprob() const { return logprob(target); }

  static constexpr int kDoubles = 5;  // as sent between ranks: max, argmax, sum_exp, target, bad
  void pack(double* out) const;
  static LogitSummary unpack(const double* in);
};

// The summary of one row's logits over the vocabulary slice `slice` (logits[0] is token
// slice.begin); `target`: the token whose logit to keep when it lies in the slice (-1: none).
LogitSummary summarize_logits(const float* logits, Span slice, int64_t target = -1);

// The whole row's summary from its slices' summaries, in vocabulary order.
LogitSummary merge_summaries(const std::vector<LogitSummary>& slices);

}  // namespace lowsync
