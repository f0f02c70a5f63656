#include "layers/model.h"

namespace lowsync {

Transformer::Transformer(const ModelConfig& cfg, Backend& be) : cfg_(cfg), be_(be), w_(load_weights(cfg, be)) {}

void Transformer::norm(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& out) {
  if (cfg_.family == Family::Llama)
    be_.rmsnorm(x, w, cfg_.norm_eps, out);
  else
    be_.layernorm(x, w, b, cfg_.norm_eps, out);
}

Tensor Transformer::forward(const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache) {
  const int64_t T = layout.tokens();
  Tensor x = be_.zeros(T, cfg_.hidden);
  be_.embedding(w_.tok_emb, tokens, x, false);
  if (!w_.pos_emb.empty()) be_.embedding(w_.pos_emb, layout.positions, x, true);
  if (cfg_.family == Family::Bert) {
    be_.embedding(w_.type_emb, std::vector<int32_t>(T, 0), x, true);  // token type 0 for every token
    norm(x, w_.emb_norm_w, w_.emb_norm_b, x);
  }

  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (cfg_.is_decoder())
      decoder_block(l, x, layout, cache);
    else
      encoder_block(l, x, layout, cache);
  }

  if (cfg_.is_decoder()) norm(x, w_.final_norm_w, w_.final_norm_b, x);
  return x;
}

// Pre-LN block:  x = x + Attn(norm1(x));  x = x + FFN(norm2(x))
void Transformer::decoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  Tensor h = be_.zeros(x.rows, x.cols);
  norm(x, w.norm1_w, w.norm1_b, h);
  Tensor a = attention(l, h, layout, cache);
  be_.add(x, a);
  norm(x, w.norm2_w, w.norm2_b, h);
  Tensor m = ffn(l, h);
  be_.add(x, m);
}

// Post-LN block:  x = norm1(x + Attn(x));  x = norm2(x + FFN(x))
void Transformer::encoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  Tensor a = attention(l, x, layout, cache);
  be_.add(x, a);
  norm(x, w.norm1_w, w.norm1_b, x);
  Tensor m = ffn(l, x);
  be_.add(x, m);
  norm(x, w.norm2_w, w.norm2_b, x);
}

Tensor Transformer::attention(int l, const Tensor& h, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  const int64_t T = h.rows;
  Tensor q = be_.zeros(T, cfg_.q_dim()), k = be_.zeros(T, cfg_.kv_dim()), v = be_.zeros(T, cfg_.kv_dim());
  be_.matmul(h, w.wq, w.bq.empty() ? nullptr : &w.bq, q);
  be_.matmul(h, w.wk, w.bk.empty() ? nullptr : &w.bk, k);
  be_.matmul(h, w.wv, w.bv.empty() ? nullptr : &w.bv, v);
  if (cfg_.family == Family::Llama) be_.rope(q, k, layout.positions, cfg_.head_dim, cfg_.rope_theta);
  be_.store_kv(k, v, cache, l, layout);
  Tensor ctx = be_.zeros(T, cfg_.q_dim());
  be_.attention(q, cache, l, layout, cfg_.n_heads, cfg_.n_kv_heads, cfg_.head_dim, cfg_.is_decoder(), ctx);
  Tensor out = be_.zeros(T, cfg_.hidden);
  be_.matmul(ctx, w.wo, w.bo.empty() ? nullptr : &w.bo, out);
  return out;
}

Tensor Transformer::ffn(int l, const Tensor& h) {
  const LayerWeights& w = w_.layers[l];
  Tensor up = be_.zeros(h.rows, cfg_.intermediate);
  be_.matmul(h, w.w_up, w.b_up.empty() ? nullptr : &w.b_up, up);
  if (cfg_.gated_ffn()) {
    Tensor gate = be_.zeros(h.rows, cfg_.intermediate);
    be_.matmul(h, w.w_gate, nullptr, gate);
    be_.silu_mul(gate, up);
    up = gate;
  } else {
    be_.gelu(up, cfg_.activation == Activation::GeluTanh);
  }
  Tensor out = be_.zeros(h.rows, cfg_.hidden);
  be_.matmul(up, w.w_down, w.b_down.empty() ? nullptr : &w.b_down, out);
  return out;
}

Tensor Transformer::logits(const Tensor& hidden, const std::vector<int64_t>& rows) {
  Tensor picked = be_.zeros(static_cast<int64_t>(rows.size()), cfg_.hidden);
  be_.gather_rows(hidden, rows, picked);
  Tensor out = be_.zeros(picked.rows, cfg_.vocab);
  be_.matmul(picked, w_.lm_head, nullptr, out);
  return out;
}

}  // namespace lowsync
