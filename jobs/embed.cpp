// Embedding: one packed pass, then each sequence's last hidden state pooled (mean over its tokens
// or its first token) and optionally L2-normalised.
#include <cmath>

#include "jobs/finite.h"
#include "jobs/tasks.h"

namespace lowsync {

std::vector<RowResult> embed_batch(Transformer& model, const EmbedOptions& opt, const TokenRows& prompts,
                                   int64_t first_row) {
  const int H = model.config().hidden;
  BatchLayout layout;
  std::vector<int32_t> tokens;
  for (const auto& p : prompts) {
    layout.add(static_cast<int64_t>(p.size()), 0, layout.tokens());
    tokens.insert(tokens.end(), p.begin(), p.end());
  }
  KVCache cache = model.make_cache(layout.tokens());
  Tensor hidden = model.forward(tokens, layout, cache);
  std::vector<float> h(hidden.numel());
  model.backend().to_host(hidden, h.data());

  std::vector<RowResult> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const SequenceSlot& s = layout.seqs[i];
    const int64_t n = opt.pooling == "cls" ? 1 : s.n_new;
    std::vector<double> acc(H, 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int c = 0; c < H; ++c) acc[c] += h[(s.token_begin + t) * H + c];
    double norm = 0;
    for (int c = 0; c < H; ++c) norm += (acc[c] /= n) * acc[c];
    const double scale = opt.normalize ? 1.0 / std::max(std::sqrt(norm), 1e-12) : 1.0;
    out[i].embedding.resize(H);
    for (int c = 0; c < H; ++c) out[i].embedding[c] = static_cast<float>(acc[c] * scale);
    require_finite(model, out[i].embedding.data(), H, first_row + static_cast<int64_t>(i), "embed", "the embedding");
  }
  return out;
}

}  // namespace lowsync
