#pragma once
// A transformer of one of the supported families, its weights on a backend, and its forward pass
// over a packed batch. Blocks are written out per family shape: pre-LN decoder (LLaMA, GPT-2) and
// post-LN encoder (BERT).
#include <vector>

#include "io/model_config.h"
#include "layers/backend.h"

namespace lowsync {

struct LayerWeights {
  Tensor norm1_w, norm1_b;  // before attention (pre-LN) or after it (BERT's attention.output.LayerNorm)
  Tensor wq, bq, wk, bk, wv, bv, wo, bo;
  Tensor norm2_w, norm2_b;  // before the FFN (pre-LN) or after it (BERT's output.LayerNorm)
  Tensor w_gate, w_up, b_up, w_down, b_down;
};

struct ModelWeights {
  Tensor tok_emb, pos_emb, type_emb;  // pos: GPT-2, BERT; type: BERT
  Tensor emb_norm_w, emb_norm_b;      // BERT's embeddings.LayerNorm
  std::vector<LayerWeights> layers;
  Tensor final_norm_w, final_norm_b;  // LLaMA's norm, GPT-2's ln_f
  Tensor lm_head;                     // [vocab, hidden]; the token embedding when tied
};

// Reads the Hugging Face checkpoint of cfg.dir and uploads it to the backend.
ModelWeights load_weights(const ModelConfig& cfg, Backend& be);

class Transformer {
 public:
  Transformer(const ModelConfig& cfg, Backend& be);

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return be_; }

  // Runs the batch's new tokens through every layer, appending their keys/values to the cache.
  // Returns the last hidden state [tokens, hidden] (after the final norm for decoders).
  Tensor forward(const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache);
  // Next-token logits [rows.size(), vocab] of the chosen rows of a hidden state.
  Tensor logits(const Tensor& hidden, const std::vector<int64_t>& rows);
  KVCache make_cache(int64_t capacity) { return be_.make_kv_cache(cfg_.n_layers, capacity, cfg_.kv_dim()); }

 private:
  void norm(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& out);
  void decoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache);
  void encoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache);
  Tensor attention(int l, const Tensor& h, const BatchLayout& layout, KVCache& cache);
  Tensor ffn(int l, const Tensor& h);

  ModelConfig cfg_;
  Backend& be_;
  ModelWeights w_;
};

}  // namespace lowsync
