// Hugging Face checkpoint names -> this rank's ModelWeights, one function per family. Every
// tensor's shape is checked against config.json so that a mismatched checkpoint fails at load with
// the tensor's name. A rank copies only its share out of the memory-mapped files:
//   column-parallel (Q, K, V, FFN up/gate, their biases): rows [r*n/R, (r+1)*n/R) of W[out, in]
//   row-parallel (attention out, FFN down): columns [r*n/R, (r+1)*n/R) of W[out, in]
//   everything else (embeddings, norms, LM head, row-parallel biases): whole.
#include <string>

#include "io/error.h"
#include "io/safetensors.h"
#include "layers/model.h"

namespace lowsync {

namespace {

struct Range {
  int64_t begin, size;
};

class Loader {
 public:
  Loader(const ModelConfig& cfg, Backend& be) : cfg_(cfg), be_(be), ckpt_(cfg.dir) {}

  bool has(const std::string& name) const { return ckpt_.has(prefix_ + name); }
  // Chooses the key prefix ("model.", "transformer.", "bert.", "") under which `probe` exists.
  void detect_prefix(const std::string& probe, std::initializer_list<const char*> candidates) {
    for (const char* p : candidates)
      if (ckpt_.has(p + probe)) {
        prefix_ = p;
        return;
      }
    prefix_ = *candidates.begin();  // the error below then names the canonical key
  }

  // A whole [rows, cols] matrix, or a vector of `rows` elements when cols = 0.
  Tensor whole(const std::string& name, int64_t rows, int64_t cols = 0) {
    check_shape(name, rows, cols);
    return be_.upload_weight(ckpt_.read(prefix_ + name), cols ? rows : 1, cols ? cols : rows);
  }
  // Rows `part` of a [rows, cols] matrix (cols = 0: elements of a vector).
  Tensor rows(const std::string& name, int64_t rows, int64_t cols, Range part) {
    check_shape(name, rows, cols);
    return be_.upload_weight(ckpt_.read_rows(prefix_ + name, part.begin, part.begin + part.size),
                             cols ? part.size : 1, cols ? cols : part.size);
  }
  // Columns `part` of a [rows, cols] matrix.
  Tensor cols(const std::string& name, int64_t rows, int64_t cols, Range part) {
    check_shape(name, rows, cols);
    return be_.upload_weight(ckpt_.read_cols(prefix_ + name, part.begin, part.begin + part.size), rows, part.size);
  }
  // GPT-2's Conv1D stores W^T [in, out]; lowsync keeps [out, in]. Takes outputs `out_part`
  // (column-parallel) and inputs `in_part` (row-parallel) of it.
  Tensor conv1d(const std::string& name, int64_t in, int64_t out, Range out_part, Range in_part) {
    check_shape(name, in, out);
    std::vector<float> src = ckpt_.read_cols(prefix_ + name, out_part.begin, out_part.begin + out_part.size);
    std::vector<float> dst(out_part.size * in_part.size);
    for (int64_t i = 0; i < in_part.size; ++i)
      for (int64_t o = 0; o < out_part.size; ++o) dst[o * in_part.size + i] = src[(in_part.begin + i) * out_part.size + o];
    return be_.upload_weight(dst, out_part.size, in_part.size);
  }
  void set_prefix(std::string p) { prefix_ = std::move(p); }

 private:
  void check_shape(const std::string& name, int64_t rows, int64_t cols) {
    const std::string key = prefix_ + name;
    const TensorInfo& t = ckpt_.info(key);
    const bool ok = cols ? (t.shape.size() == 2 && t.shape[0] == rows && t.shape[1] == cols)
                         : (t.numel() == rows && t.shape.size() <= 1);
    if (ok) return;
    std::string got = "[";
    for (size_t i = 0; i < t.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t.shape[i]);
    throw UserError(cfg_.dir + ": tensor '" + key + "' has shape " + got + "]; expected [" + std::to_string(rows) +
                    (cols ? ", " + std::to_string(cols) : "") + "]");
  }
  const ModelConfig& cfg_;
  Backend& be_;
  CheckpointReader ckpt_;
  std::string prefix_;
};

// This rank's slices along each parallel dimension.
struct Slices {
  Range q, kv, ffn;
  Slices(const ModelConfig& c, Shard s) {
    const LocalShape local(c, s);
    q = {int64_t(s.rank) * local.q_dim, local.q_dim};
    kv = {int64_t(s.rank) * local.kv_dim, local.kv_dim};
    ffn = {int64_t(s.rank) * local.intermediate, local.intermediate};
  }
};

ModelWeights load_llama(const ModelConfig& c, Shard shard, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate, Q = c.q_dim(), KV = c.kv_dim();
  const Slices s(c, shard);
  in.detect_prefix("embed_tokens.weight", {"model.", ""});
  ModelWeights m;
  m.tok_emb = in.whole("embed_tokens.weight", c.vocab, H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights w;
    w.norm1_w = in.whole(p + "input_layernorm.weight", H);
    w.wq = in.rows(p + "self_attn.q_proj.weight", Q, H, s.q);
    w.wk = in.rows(p + "self_attn.k_proj.weight", KV, H, s.kv);
    w.wv = in.rows(p + "self_attn.v_proj.weight", KV, H, s.kv);
    w.wo = in.cols(p + "self_attn.o_proj.weight", H, Q, s.q);
    if (c.attention_bias) {
      w.bq = in.rows(p + "self_attn.q_proj.bias", Q, 0, s.q);
      w.bk = in.rows(p + "self_attn.k_proj.bias", KV, 0, s.kv);
      w.bv = in.rows(p + "self_attn.v_proj.bias", KV, 0, s.kv);
      if (in.has(p + "self_attn.o_proj.bias")) w.bo = in.whole(p + "self_attn.o_proj.bias", H);
    }
    w.norm2_w = in.whole(p + "post_attention_layernorm.weight", H);
    w.w_gate = in.rows(p + "mlp.gate_proj.weight", I, H, s.ffn);
    w.w_up = in.rows(p + "mlp.up_proj.weight", I, H, s.ffn);
    w.w_down = in.cols(p + "mlp.down_proj.weight", H, I, s.ffn);
    m.layers.push_back(w);
  }
  m.final_norm_w = in.whole("norm.weight", H);
  if (c.tied_embeddings) {
    m.lm_head = m.tok_emb;
  } else {
    in.set_prefix("");
    m.lm_head = in.whole("lm_head.weight", c.vocab, H);
  }
  return m;
}

ModelWeights load_gpt2(const ModelConfig& c, Shard shard, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate;
  const Slices s(c, shard);
  const Range all_h{0, H};
  in.detect_prefix("wte.weight", {"transformer.", ""});
  ModelWeights m;
  m.tok_emb = in.whole("wte.weight", c.vocab, H);
  m.pos_emb = in.whole("wpe.weight", c.max_positions, H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerWeights w;
    w.norm1_w = in.whole(p + "ln_1.weight", H);
    w.norm1_b = in.whole(p + "ln_1.bias", H);
    // c_attn holds q, k, v side by side along its output dimension.
    w.wq = in.conv1d(p + "attn.c_attn.weight", H, 3 * H, {s.q.begin, s.q.size}, all_h);
    w.wk = in.conv1d(p + "attn.c_attn.weight", H, 3 * H, {H + s.q.begin, s.q.size}, all_h);
    w.wv = in.conv1d(p + "attn.c_attn.weight", H, 3 * H, {2 * H + s.q.begin, s.q.size}, all_h);
    w.bq = in.rows(p + "attn.c_attn.bias", 3 * H, 0, {s.q.begin, s.q.size});
    w.bk = in.rows(p + "attn.c_attn.bias", 3 * H, 0, {H + s.q.begin, s.q.size});
    w.bv = in.rows(p + "attn.c_attn.bias", 3 * H, 0, {2 * H + s.q.begin, s.q.size});
    w.wo = in.conv1d(p + "attn.c_proj.weight", H, H, all_h, s.q);
    w.bo = in.whole(p + "attn.c_proj.bias", H);
    w.norm2_w = in.whole(p + "ln_2.weight", H);
    w.norm2_b = in.whole(p + "ln_2.bias", H);
    w.w_up = in.conv1d(p + "mlp.c_fc.weight", H, I, s.ffn, all_h);
    w.b_up = in.rows(p + "mlp.c_fc.bias", I, 0, s.ffn);
    w.w_down = in.conv1d(p + "mlp.c_proj.weight", I, H, all_h, s.ffn);
    w.b_down = in.whole(p + "mlp.c_proj.bias", H);
    m.layers.push_back(w);
  }
  m.final_norm_w = in.whole("ln_f.weight", H);
  m.final_norm_b = in.whole("ln_f.bias", H);
  m.lm_head = m.tok_emb;  // GPT-2 ties its head to the token embedding
  return m;
}

ModelWeights load_bert(const ModelConfig& c, Shard shard, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate;
  const Slices s(c, shard);
  in.detect_prefix("embeddings.word_embeddings.weight", {"", "bert."});
  ModelWeights m;
  m.tok_emb = in.whole("embeddings.word_embeddings.weight", c.vocab, H);
  m.pos_emb = in.whole("embeddings.position_embeddings.weight", c.max_positions, H);
  m.type_emb = in.whole("embeddings.token_type_embeddings.weight", c.type_vocab, H);
  m.emb_norm_w = in.whole("embeddings.LayerNorm.weight", H);
  m.emb_norm_b = in.whole("embeddings.LayerNorm.bias", H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    LayerWeights w;
    w.wq = in.rows(p + "attention.self.query.weight", H, H, s.q);
    w.bq = in.rows(p + "attention.self.query.bias", H, 0, s.q);
    w.wk = in.rows(p + "attention.self.key.weight", H, H, s.q);
    w.bk = in.rows(p + "attention.self.key.bias", H, 0, s.q);
    w.wv = in.rows(p + "attention.self.value.weight", H, H, s.q);
    w.bv = in.rows(p + "attention.self.value.bias", H, 0, s.q);
    w.wo = in.cols(p + "attention.output.dense.weight", H, H, s.q);
    w.bo = in.whole(p + "attention.output.dense.bias", H);
    w.norm1_w = in.whole(p + "attention.output.LayerNorm.weight", H);
    w.norm1_b = in.whole(p + "attention.output.LayerNorm.bias", H);
    w.w_up = in.rows(p + "intermediate.dense.weight", I, H, s.ffn);
    w.b_up = in.rows(p + "intermediate.dense.bias", I, 0, s.ffn);
    w.w_down = in.cols(p + "output.dense.weight", H, I, s.ffn);
    w.b_down = in.whole(p + "output.dense.bias", H);
    w.norm2_w = in.whole(p + "output.LayerNorm.weight", H);
    w.norm2_b = in.whole(p + "output.LayerNorm.bias", H);
    m.layers.push_back(w);
  }
  return m;  // BertModel has no LM head
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, Shard shard, Backend& be) {
  Loader in(cfg, be);
  switch (cfg.family) {
    case Family::Llama: return load_llama(cfg, shard, in);
    case Family::GPT2: return load_gpt2(cfg, shard, in);
    case Family::Bert: return load_bert(cfg, shard, in);
  }
  throw UserError(cfg.dir + ": unsupported family");
}

}  // namespace lowsync
