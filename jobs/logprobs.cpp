#include "jobs/logprobs.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "layers/vector_exp.h"

namespace lowsync {

void record_logprobs(const float* logits, int vocab, int token, int k, RowResult& row) {
  // log_softmax with its sum in double: the log-sum-exp over a large vocabulary is where fp32
  // loses digits. The exponentials themselves are fp32 (within 2 ulp, layers/vector_exp.h), a
  // vector at a time: per new token of every row, this is a generate job's largest host work.
  const float mx = *std::max_element(logits, logits + vocab);
  const double log_z = mx + std::log(exp_sum_double(logits, vocab, mx));
  row.token_logprobs.push_back(static_cast<float>(double(logits[token]) - log_z));
  if (k == 0) return;

  k = std::min(k, vocab);
  std::vector<int> ids(vocab);
  for (int v = 0; v < vocab; ++v) ids[v] = v;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                    [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int j = 0; j < k; ++j) {
    row.top_ids.push_back(ids[j]);
    row.top_logprobs.push_back(static_cast<float>(double(logits[ids[j]]) - log_z));
  }
}

int32_t argmax_with_logprob(const LogitSummary& s, RowResult& row) {
  row.token_logprobs.push_back(static_cast<float>(s.logprob(s.max)));
  return static_cast<int32_t>(s.argmax);
}

}  // namespace lowsync
