#include "jobs/sampler.h"

#include <algorithm>
#include <cmath>

namespace lowsync {

namespace {
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

Sampler::Sampler(const GenerateOptions& opt, uint64_t seed, int64_t row)
    : opt_(opt), rng_(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(row)))) {}

int Sampler::next(const float* logits, int vocab) {
  if (opt_.temperature == 0.f)  // greedy: the first maximum, as torch.argmax
    return static_cast<int>(std::max_element(logits, logits + vocab) - logits);

  cand_.resize(vocab);
  for (int i = 0; i < vocab; ++i) cand_[i] = {logits[i] / opt_.temperature, i};
  // Most likely first; ties by token id, so the order is fully determined.
  auto more_likely = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (opt_.top_k > 0 && static_cast<size_t>(opt_.top_k) < keep) {
    keep = opt_.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), more_likely);
  } else {
    std::sort(cand_.begin(), cand_.end(), more_likely);
  }
  const float mx = cand_[0].first;
  double total = 0;
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i) total += (p[i] = std::exp(double(cand_[i].first - mx)));
  if (opt_.top_p < 1.f) {  // smallest prefix whose probability reaches top_p
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i] / total;
      if (cum >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += p[i];
  }
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    if (u < p[i]) return cand_[i].second;
    u -= p[i];
  }
  return cand_[keep - 1].second;
}

}  // namespace lowsync
