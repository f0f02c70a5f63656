// Embedding: one packed pass, then each sequence's last hidden state pooled (mean over its tokens,
// its first token or its last token) and optionally L2-normalised.
#include <cmath>

#include "jobs/finite.h"
#include "jobs/tasks.h"

namespace lowsync {

std::vector<RowResult> embed_batch(PipelineStage& stage, const EmbedOptions& opt, const TokenRows& prompts,
                                   int64_t first_row) {
  Transformer& model = stage.model;
  const int H = model.config().hidden;
  std::vector<RowResult> out(prompts.size());
  const auto micro = split_rows(prompts.size(), stage.micro_batches);
  for (size_t m = 0; m < micro.size(); ++m) {
  BatchLayout layout;
  std::vector<int32_t> tokens;
  for (size_t i : micro[m]) {
    layout.add(static_cast<int64_t>(prompts[i].size()), 0, layout.tokens());
    tokens.insert(tokens.end(), prompts[i].begin(), prompts[i].end());
  }
  KVCache cache = model.make_cache(layout.tokens());
  const Tensor hidden = stage.pass(static_cast<int>(m), tokens, layout, cache);
  if (!stage.link.last()) continue;
  std::vector<float> h(hidden.numel());
  model.backend().to_host(hidden, h.data());

  for (size_t k = 0; k < micro[m].size(); ++k) {
    const size_t i = micro[m][k];
    const SequenceSlot& s = layout.seqs[k];
    // The tokens pooled: all (mean), the first (cls), or the last (last: a decoder's only token
    // that has seen the whole sequence).
    int64_t from = 0, n = s.n_new;
    if (opt.pooling == "cls") n = 1;
    if (opt.pooling == "last") from = s.n_new - 1, n = 1;
    std::vector<double> acc(H, 0.0);
    for (int64_t t = from; t < from + n; ++t)
      for (int c = 0; c < H; ++c) acc[c] += h[(s.token_begin + t) * H + c];
    double norm = 0;
    for (int c = 0; c < H; ++c) norm += (acc[c] /= n) * acc[c];
    const double scale = opt.normalize ? 1.0 / std::max(std::sqrt(norm), 1e-12) : 1.0;
    out[i].embedding.resize(H);
    for (int c = 0; c < H; ++c) out[i].embedding[c] = static_cast<float>(acc[c] * scale);
    require_finite(model, out[i].embedding.data(), H, first_row + static_cast<int64_t>(i), "embed", "the embedding");
  }
  }
  if (stage.link.stages() == 1) return out;
  if (stage.link.last()) stage.link.send_results(out);
  return stage.link.first() ? stage.link.receive_results() : std::vector<RowResult>{};
}

}  // namespace lowsync
