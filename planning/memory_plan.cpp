#include "planning/memory_plan.h"

#include <algorithm>

namespace lowsync {

namespace {

// Parameters of one block of `heads` query heads, `kv` kv heads and `ffn` FFN columns: its weight
// matrices (stored in the weights dtype) and its norms and biases (fp32; row-parallel biases are
// whole on every rank).
struct Parameters {
  int64_t matrices = 0, vectors = 0;
  Parameters& operator+=(const Parameters& o) {
    matrices += o.matrices;
    vectors += o.vectors;
    return *this;
  }
};

Parameters block_parameters(const ModelConfig& m, int64_t heads, int64_t kv, int64_t ffn) {
  const int64_t H = m.hidden, d = m.head_dim;
  Parameters n;
  n.matrices = H * d * (2 * heads + 2 * kv) + H * ffn * (m.gated_ffn() ? 3 : 2);
  const bool layer_norm = m.family != Family::Llama;
  n.vectors += (layer_norm ? 4 : 2) * H;                                       // two norms
  if (m.attention_bias) n.vectors += d * (heads + 2 * kv) + H;                 // q, k, v; o whole
  if (m.family != Family::Llama) n.vectors += ffn + H;                          // FFN up; down whole
  return n;
}

}  // namespace

RankMemory rank_memory(const ModelConfig& m, const LayerShare& share, const PlanLimits& limits, const Span& layers,
                       bool first, bool last, int head_rows) {
  if (head_rows < 0) head_rows = m.vocab;
  const int64_t H = m.hidden, f = sizeof(float);
  RankMemory mem;

  // Weights, and the KV cache's width summed over the stage's layers (Transformer::make_cache).
  // q_dim, kv_dim, ffn: the widest block the rank computes at a time.
  Parameters layer_parameters;
  int64_t kv_widths = 0, kv_dim = 0, q_dim = 0, ffn = 0;
  auto add_block = [&](int64_t heads, int64_t kv, int64_t columns) {
    kv_dim = std::max(kv_dim, kv * m.head_dim);
    q_dim = std::max(q_dim, heads * m.head_dim);
    ffn = std::max(ffn, columns);
    return block_parameters(m, heads, kv, columns);
  };
  for (int l = layers.begin; l < layers.end(); ++l) {
    if (m.bp.enabled() && !m.bp.is_coupled(l)) {
      for (int r = share.sub_blocks.begin; r < share.sub_blocks.end(); ++r) {
        layer_parameters += add_block(m.bp.heads[r], m.bp.kv_heads[r], m.bp.ffn[r]);
        kv_widths += int64_t(m.bp.kv_heads[r]) * m.head_dim;
      }
      continue;
    }
    // An ordinary model's TP share, or a decoupled model's coupled layer (its sub-blocks' columns).
    const LayerShare tp = m.bp.enabled() ? share.coupled_share(m) : share;
    layer_parameters += add_block(tp.heads.count, tp.kv_heads.count, tp.ffn.count);
    kv_widths += int64_t(tp.kv_heads.count) * m.head_dim;
  }
  const bool tied_head = m.family == Family::GPT2 || (m.family == Family::Llama && m.tied_embeddings);
  Parameters shared;  // embeddings and head are matrices (lookups widen their rows)
  if (first) shared.matrices += int64_t(m.vocab) * H;                                                   // token embedding
  if (last && m.is_decoder() && (!first || !tied_head)) shared.matrices += int64_t(head_rows) * H;       // head (not a view of it)
  if (first && m.family != Family::Llama) shared.matrices += int64_t(m.max_positions) * H;              // positions
  if (first && m.family == Family::Bert) shared.matrices += int64_t(m.type_vocab) * H;                  // token types
  if (first && m.family == Family::Bert) shared.vectors += 2 * H;                                        // embedding norm
  if (last && m.is_decoder()) shared.vectors += (m.family == Family::Llama ? 1 : 2) * H;                // final norm
  mem.weights = int64_t(weights_dtype_bytes(limits.weights) * double(layer_parameters.matrices + shared.matrices)) +
                f * (layer_parameters.vectors + shared.vectors);

  // KV cache: `rows` keys and values in every layer (of every local sub-block).
  int64_t rows = limits.max_tokens;
  if (limits.task == "generate")
    rows = std::min<int64_t>(int64_t(limits.max_tokens) + int64_t(limits.max_sequences) * limits.max_new_tokens,
                             int64_t(limits.max_sequences) * m.max_positions);
  rows = std::min<int64_t>(rows, int64_t(limits.max_sequences) * m.max_positions);
  mem.kv_cache = f * rows * 2 * kv_widths;

  // Activations of the largest pass: the residual, a norm's output and a partial sum; q, k, v and
  // the attention context; FFN up and gate (a decoupled rank adds its stream and the merge delta);
  // then the logits: every row for score, the last row of each sequence for generate (its rows of
  // the head for score; whole rows for generate, which a split head may gather).
  const int64_t T = limits.max_tokens;
  int64_t per_token = 3 * H + 2 * q_dim + 2 * kv_dim + 2 * ffn;
  if (m.bp.enabled()) per_token += 2 * H;
  int64_t logits = 0;
  if (last && m.is_decoder())
    logits = limits.task == "score" ? int64_t(head_rows) * T : int64_t(m.vocab) * std::min<int64_t>(T, limits.max_sequences);
  mem.activations = f * (T * per_token + logits);
  return mem;
}

}  // namespace lowsync
