#pragma once
// Next-token choice from logits: greedy, or temperature / top-k / top-p sampling. Each request
// draws from its own random stream, seeded from (job seed, row index), so what a row generates does
// not depend on the other rows of its batch.
#include <cstdint>
#include <random>
#include <vector>

#include "io/job_config.h"

namespace lowsync {

class Sampler {
 public:
  Sampler(const GenerateOptions& opt, uint64_t seed, int64_t row);
  int next(const float* logits, int vocab);

 private:
  GenerateOptions opt_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> cand_;
};

}  // namespace lowsync
