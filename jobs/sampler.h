#pragma once
// Next-token choice from logits. The logits are first adjusted as transformers' logits processors
// (and vLLM) do: repetition penalty over the prompt and the new tokens, presence and frequency
// penalties over the new tokens, stop token ids masked until min_new_tokens. Then greedy, or
// temperature / top-k / top-p / min-p sampling. Each request draws from its own random stream,
// seeded from (job seed, row index), so what a row generates does not depend on the other rows of
// its batch.
#include <cstdint>
#include <random>
#include <vector>

#include "io/job_config.h"

namespace lowsync {

class Sampler {
 public:
  // opt: with its stop rules resolved (resolve_stops, jobs/stopping.h).
  Sampler(const GenerateOptions& opt, uint64_t seed, int64_t row);
  // logits [vocab] of the next position of a row with this prompt and these new tokens.
  int next(const float* logits, int vocab, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated);
  // Whether next() would pick the plain argmax of the logits for a row with `generated` new tokens:
  // greedy with no penalty and no stop token masked (then the argmax of a split head's merged
  // summary is the same token, layers/logit_summary.h).
  bool picks_argmax(size_t generated) const;

 private:
  void adjust(const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated);

  const GenerateOptions* opt_;
  std::mt19937_64 rng_;
  std::vector<float> scores_;
  std::vector<std::pair<float, int>> cand_;
};

}  // namespace lowsync
