#include "layers/model.h"

#include "io/error.h"

namespace lowsync {

LocalShape::LocalShape(const ModelConfig& cfg, Shard shard) {
  const int R = shard.size;
  auto need = [&](int n, const char* what) {
    if (n % R)
      throw UserError(cfg.dir + ": " + what + " = " + std::to_string(n) + " is not divisible by parallel.tp = " +
                      std::to_string(R) + "; choose a tp that divides it");
    return n / R;
  };
  n_heads = need(cfg.n_heads, "num_attention_heads");
  n_kv_heads = need(cfg.n_kv_heads, "num_key_value_heads");
  intermediate = need(cfg.intermediate, "intermediate_size");
  q_dim = n_heads * cfg.head_dim;
  kv_dim = n_kv_heads * cfg.head_dim;
}

Transformer::Transformer(const ModelConfig& cfg, Backend& be, TensorParallelGroup tp, std::vector<bool> spd_drop)
    : cfg_(cfg),
      be_(be),
      tp_(tp),
      local_(cfg, Shard{tp.rank(), tp.size()}),
      w_(load_weights(cfg, Shard{tp.rank(), tp.size()}, be)) {
  set_spd_drop(std::move(spd_drop));
}

void Transformer::set_spd_drop(std::vector<bool> drop) {
  drop.resize(cfg_.n_layers, false);
  for (bool d : drop)
    if (d && !cfg_.is_decoder())
      throw UserError(cfg_.dir + ": Sync-Point Drop needs a pre-LN decoder (llama, gpt2); " + cfg_.architecture +
                      " is a post-LN encoder, whose LayerNorm after attention needs the full sum");
  spd_drop_ = std::move(drop);
}

void Transformer::norm(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& out) {
  if (cfg_.family == Family::Llama)
    be_.rmsnorm(x, w, cfg_.norm_eps, out);
  else
    be_.layernorm(x, w, b, cfg_.norm_eps, out);
}

// The bias of a row-parallel layer is added once, after the partial outputs are summed.
void Transformer::add_bias(Tensor& x, const Tensor& bias) {
  if (!bias.empty()) be_.add_bias(x, bias);
}

Tensor Transformer::forward(const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache) {
  const int64_t T = layout.tokens();
  ++passes_;
  tokens_ += T;
  Tensor x = be_.zeros(T, cfg_.hidden);
  be_.embedding(w_.tok_emb, tokens, x, false);
  if (!w_.pos_emb.empty()) be_.embedding(w_.pos_emb, layout.positions, x, true);
  if (cfg_.family == Family::Bert) {
    be_.embedding(w_.type_emb, std::vector<int32_t>(T, 0), x, true);  // token type 0 for every token
    norm(x, w_.emb_norm_w, w_.emb_norm_b, x);
  }

  for (int l = 0; l < cfg_.n_layers; ++l) {
    if (!cfg_.is_decoder())
      encoder_block(l, x, layout, cache);
    else if (spd_drop_[l])
      decoder_block_spd(l, x, layout, cache);
    else
      decoder_block(l, x, layout, cache);
  }

  if (cfg_.is_decoder()) norm(x, w_.final_norm_w, w_.final_norm_b, x);
  return x;
}

// Pre-LN block:  x = x + Attn(norm1(x));  x = x + FFN(norm2(x))   (2 syncs)
void Transformer::decoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  Tensor h = be_.zeros(x.rows, x.cols);
  norm(x, w.norm1_w, w.norm1_b, h);
  Tensor a = attention_partial(l, h, layout, cache);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  be_.add(x, a);
  norm(x, w.norm2_w, w.norm2_b, h);
  Tensor m = ffn_partial(l, h);
  tp_.all_reduce(m);
  add_bias(m, w.b_down);
  be_.add(x, m);
}

// The same block with its attention sync dropped (SPD, 1 sync): each rank carries on from its own
// attention partial a_r,  h_r = x + a_r + b_o,  m_r = FFN_r(norm2(h_r)),  then one all-reduce gives
// y = x + sum_r (a_r + m_r) + b_o + b_down.
void Transformer::decoder_block_spd(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  Tensor h = be_.zeros(x.rows, x.cols);
  norm(x, w.norm1_w, w.norm1_b, h);
  Tensor a = attention_partial(l, h, layout, cache);
  Tensor h_r = be_.zeros(x.rows, x.cols);
  be_.add(h_r, x);
  be_.add(h_r, a);
  add_bias(h_r, w.bo);
  norm(h_r, w.norm2_w, w.norm2_b, h);
  Tensor m = ffn_partial(l, h);
  be_.add(a, m);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  add_bias(a, w.b_down);
  be_.add(x, a);
}

// Post-LN block:  x = norm1(x + Attn(x));  x = norm2(x + FFN(x))   (2 syncs)
void Transformer::encoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  Tensor a = attention_partial(l, x, layout, cache);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  be_.add(x, a);
  norm(x, w.norm1_w, w.norm1_b, x);
  Tensor m = ffn_partial(l, x);
  tp_.all_reduce(m);
  add_bias(m, w.b_down);
  be_.add(x, m);
  norm(x, w.norm2_w, w.norm2_b, x);
}

// This rank's heads: column-parallel Q/K/V, attention, row-parallel output projection (no bias).
Tensor Transformer::attention_partial(int l, const Tensor& h, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = w_.layers[l];
  const int64_t T = h.rows;
  Tensor q = be_.zeros(T, local_.q_dim), k = be_.zeros(T, local_.kv_dim), v = be_.zeros(T, local_.kv_dim);
  be_.matmul(h, w.wq, w.bq.empty() ? nullptr : &w.bq, q);
  be_.matmul(h, w.wk, w.bk.empty() ? nullptr : &w.bk, k);
  be_.matmul(h, w.wv, w.bv.empty() ? nullptr : &w.bv, v);
  if (cfg_.family == Family::Llama) be_.rope(q, k, layout.positions, cfg_.head_dim, cfg_.rope_theta);
  be_.store_kv(k, v, cache, l, layout);
  Tensor ctx = be_.zeros(T, local_.q_dim);
  be_.attention(q, cache, l, layout, local_.n_heads, local_.n_kv_heads, cfg_.head_dim, cfg_.is_decoder(), ctx);
  Tensor out = be_.zeros(T, cfg_.hidden);
  be_.matmul(ctx, w.wo, nullptr, out);
  return out;
}

// This rank's FFN columns: column-parallel up (and gate), activation, row-parallel down (no bias).
Tensor Transformer::ffn_partial(int l, const Tensor& h) {
  const LayerWeights& w = w_.layers[l];
  Tensor up = be_.zeros(h.rows, local_.intermediate);
  be_.matmul(h, w.w_up, w.b_up.empty() ? nullptr : &w.b_up, up);
  if (cfg_.gated_ffn()) {
    Tensor gate = be_.zeros(h.rows, local_.intermediate);
    be_.matmul(h, w.w_gate, nullptr, gate);
    be_.silu_mul(gate, up);
    up = gate;
  } else {
    be_.gelu(up, cfg_.activation == Activation::GeluTanh);
  }
  Tensor out = be_.zeros(h.rows, cfg_.hidden);
  be_.matmul(up, w.w_down, nullptr, out);
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
