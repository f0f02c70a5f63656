#include "jobs/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

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
    : opt_(&opt), rng_(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(row)))) {}

// scores_ = logits, adjusted in transformers' and vLLM's order.
void Sampler::adjust(const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated) {
  const GenerateOptions& o = *opt_;
  const int vocab = static_cast<int>(scores_.size());
  if (o.repetition_penalty != 1.f) {  // each token seen once: a positive logit divided, a negative one multiplied
    std::vector<bool> seen(vocab, false);
    for (const auto* tokens : {&prompt, &generated})
      for (int32_t t : *tokens) {
        if (seen[t]) continue;
        seen[t] = true;
        float& s = scores_[t];
        s = s < 0 ? s * o.repetition_penalty : s / o.repetition_penalty;
      }
  }
  if (o.presence_penalty != 0.f || o.frequency_penalty != 0.f) {  // s -= frequency x count + presence x [count > 0]
    std::map<int32_t, int> count;
    for (int32_t t : generated) ++count[t];
    for (const auto& [t, c] : count) scores_[t] -= o.frequency_penalty * static_cast<float>(c) + o.presence_penalty;
  }
  if (static_cast<int64_t>(generated.size()) < o.min_new_tokens)
    for (int id : o.stop_token_ids) scores_[id] = -std::numeric_limits<float>::infinity();
}

bool Sampler::picks_argmax(size_t generated) const {
  const GenerateOptions& o = *opt_;
  const bool masked = static_cast<int64_t>(generated) < o.min_new_tokens && !o.stop_token_ids.empty();
  return o.temperature == 0.f && o.repetition_penalty == 1.f && o.presence_penalty == 0.f &&
         o.frequency_penalty == 0.f && !masked;
}

int Sampler::next(const float* logits, int vocab, const std::vector<int32_t>& prompt,
                  const std::vector<int32_t>& generated) {
  const GenerateOptions& o = *opt_;
  // Nothing to adjust and greedy: the first maximum of the logits themselves, without copying them
  // (per new token of every row: a copy of 49152 values cost SmolLM2's decode step 0.03 ms).
  if (picks_argmax(generated.size())) return static_cast<int>(std::max_element(logits, logits + vocab) - logits);
  scores_.assign(logits, logits + vocab);
  adjust(prompt, generated);
  if (o.temperature == 0.f)  // greedy: the first maximum, as torch.argmax
    return static_cast<int>(std::max_element(scores_.begin(), scores_.end()) - scores_.begin());

  cand_.resize(vocab);
  for (int i = 0; i < vocab; ++i) cand_[i] = {scores_[i] / o.temperature, i};
  // Most likely first; ties by token id, so the order is fully determined.
  auto more_likely = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = cand_.size();
  if (o.top_k > 0 && static_cast<size_t>(o.top_k) < keep) {
    keep = o.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), more_likely);
  } else {
    std::sort(cand_.begin(), cand_.end(), more_likely);
  }
  const float mx = cand_[0].first;
  double total = 0;
  std::vector<double> p(keep);
  for (size_t i = 0; i < keep; ++i) total += (p[i] = std::exp(double(cand_[i].first - mx)));
  if (o.top_p < 1.f) {  // smallest prefix whose probability reaches top_p
    double cum = 0;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i] / total;
      if (cum >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (o.min_p > 0.f) {  // p[0] = 1 is the top token's: keep those at least min_p as likely
    size_t i = 1;
    while (i < keep && p[i] >= o.min_p) ++i;
    keep = i;
  }
  total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i];
  double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    if (u < p[i]) return cand_[i].second;
    u -= p[i];
  }
  return cand_[keep - 1].second;
}

}  // namespace lowsync
