// Hugging Face checkpoint names -> ModelWeights, one function per family. Every tensor's shape is
// checked against config.json so that a mismatched checkpoint fails at load with the tensor's name.
#include <string>

#include "io/error.h"
#include "io/safetensors.h"
#include "layers/model.h"

namespace lowsync {

namespace {

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

  // A [rows, cols] tensor (cols = 0: a vector of `rows` elements).
  Tensor get(const std::string& name, int64_t rows, int64_t cols = 0) {
    const std::string key = prefix_ + name;
    const TensorInfo& t = ckpt_.info(key);
    const int64_t want = rows * (cols ? cols : 1);
    if (t.numel() != want || (cols && (t.shape.size() != 2 || t.shape[0] != rows)))
      throw UserError(cfg_.dir + ": tensor '" + key + "' has shape " + shape_str(t.shape) + "; expected [" +
                      std::to_string(rows) + (cols ? ", " + std::to_string(cols) : "") + "]");
    return cols ? be_.upload_weight(ckpt_.read(key), rows, cols) : be_.upload_weight(ckpt_.read(key), 1, rows);
  }
  // GPT-2's Conv1D stores [in, out]; lowsync keeps every weight as [out, in].
  Tensor get_transposed(const std::string& name, int64_t in, int64_t out, int64_t col0 = 0, int64_t ncols = -1) {
    const std::string key = prefix_ + name;
    const TensorInfo& t = ckpt_.info(key);
    if (t.shape.size() != 2 || t.shape[0] != in || t.shape[1] != out)
      throw UserError(cfg_.dir + ": tensor '" + key + "' has shape " + shape_str(t.shape) + "; expected [" +
                      std::to_string(in) + ", " + std::to_string(out) + "]");
    if (ncols < 0) ncols = out;
    std::vector<float> src = ckpt_.read(key), dst(ncols * in);
    for (int64_t i = 0; i < in; ++i)
      for (int64_t o = 0; o < ncols; ++o) dst[o * in + i] = src[i * out + col0 + o];
    return be_.upload_weight(dst, ncols, in);
  }
  // Elements [begin, begin+n) of a vector.
  Tensor get_part(const std::string& name, int64_t total, int64_t begin, int64_t n) {
    const std::string key = prefix_ + name;
    if (ckpt_.info(key).numel() != total)
      throw UserError(cfg_.dir + ": tensor '" + key + "' has " + std::to_string(ckpt_.info(key).numel()) +
                      " elements; expected " + std::to_string(total));
    std::vector<float> all = ckpt_.read(key);
    return be_.upload_weight(std::vector<float>(all.begin() + begin, all.begin() + begin + n), 1, n);
  }
  Tensor get_unprefixed(const std::string& name, int64_t rows, int64_t cols) {
    std::string saved = prefix_;
    prefix_ = "";
    Tensor t = get(name, rows, cols);
    prefix_ = saved;
    return t;
  }

 private:
  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }
  const ModelConfig& cfg_;
  Backend& be_;
  CheckpointReader ckpt_;
  std::string prefix_;
};

ModelWeights load_llama(const ModelConfig& c, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate, Q = c.q_dim(), KV = c.kv_dim();
  in.detect_prefix("embed_tokens.weight", {"model.", ""});
  ModelWeights m;
  m.tok_emb = in.get("embed_tokens.weight", c.vocab, H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    LayerWeights w;
    w.norm1_w = in.get(p + "input_layernorm.weight", H);
    w.wq = in.get(p + "self_attn.q_proj.weight", Q, H);
    w.wk = in.get(p + "self_attn.k_proj.weight", KV, H);
    w.wv = in.get(p + "self_attn.v_proj.weight", KV, H);
    w.wo = in.get(p + "self_attn.o_proj.weight", H, Q);
    if (c.attention_bias) {
      w.bq = in.get(p + "self_attn.q_proj.bias", Q);
      w.bk = in.get(p + "self_attn.k_proj.bias", KV);
      w.bv = in.get(p + "self_attn.v_proj.bias", KV);
      if (in.has(p + "self_attn.o_proj.bias")) w.bo = in.get(p + "self_attn.o_proj.bias", H);
    }
    w.norm2_w = in.get(p + "post_attention_layernorm.weight", H);
    w.w_gate = in.get(p + "mlp.gate_proj.weight", I, H);
    w.w_up = in.get(p + "mlp.up_proj.weight", I, H);
    w.w_down = in.get(p + "mlp.down_proj.weight", H, I);
    m.layers.push_back(w);
  }
  m.final_norm_w = in.get("norm.weight", H);
  m.lm_head = c.tied_embeddings ? m.tok_emb : in.get_unprefixed("lm_head.weight", c.vocab, H);
  return m;
}

ModelWeights load_gpt2(const ModelConfig& c, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate;
  in.detect_prefix("wte.weight", {"transformer.", ""});
  ModelWeights m;
  m.tok_emb = in.get("wte.weight", c.vocab, H);
  m.pos_emb = in.get("wpe.weight", c.max_positions, H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    LayerWeights w;
    w.norm1_w = in.get(p + "ln_1.weight", H);
    w.norm1_b = in.get(p + "ln_1.bias", H);
    // c_attn holds q, k, v side by side along its output dimension.
    w.wq = in.get_transposed(p + "attn.c_attn.weight", H, 3 * H, 0, H);
    w.wk = in.get_transposed(p + "attn.c_attn.weight", H, 3 * H, H, H);
    w.wv = in.get_transposed(p + "attn.c_attn.weight", H, 3 * H, 2 * H, H);
    w.bq = in.get_part(p + "attn.c_attn.bias", 3 * H, 0, H);
    w.bk = in.get_part(p + "attn.c_attn.bias", 3 * H, H, H);
    w.bv = in.get_part(p + "attn.c_attn.bias", 3 * H, 2 * H, H);
    w.wo = in.get_transposed(p + "attn.c_proj.weight", H, H);
    w.bo = in.get(p + "attn.c_proj.bias", H);
    w.norm2_w = in.get(p + "ln_2.weight", H);
    w.norm2_b = in.get(p + "ln_2.bias", H);
    w.w_up = in.get_transposed(p + "mlp.c_fc.weight", H, I);
    w.b_up = in.get(p + "mlp.c_fc.bias", I);
    w.w_down = in.get_transposed(p + "mlp.c_proj.weight", I, H);
    w.b_down = in.get(p + "mlp.c_proj.bias", H);
    m.layers.push_back(w);
  }
  m.final_norm_w = in.get("ln_f.weight", H);
  m.final_norm_b = in.get("ln_f.bias", H);
  m.lm_head = m.tok_emb;  // GPT-2 ties its head to the token embedding
  return m;
}

ModelWeights load_bert(const ModelConfig& c, Loader& in) {
  const int64_t H = c.hidden, I = c.intermediate;
  in.detect_prefix("embeddings.word_embeddings.weight", {"", "bert."});
  ModelWeights m;
  m.tok_emb = in.get("embeddings.word_embeddings.weight", c.vocab, H);
  m.pos_emb = in.get("embeddings.position_embeddings.weight", c.max_positions, H);
  m.type_emb = in.get("embeddings.token_type_embeddings.weight", c.type_vocab, H);
  m.emb_norm_w = in.get("embeddings.LayerNorm.weight", H);
  m.emb_norm_b = in.get("embeddings.LayerNorm.bias", H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    LayerWeights w;
    w.wq = in.get(p + "attention.self.query.weight", H, H);
    w.bq = in.get(p + "attention.self.query.bias", H);
    w.wk = in.get(p + "attention.self.key.weight", H, H);
    w.bk = in.get(p + "attention.self.key.bias", H);
    w.wv = in.get(p + "attention.self.value.weight", H, H);
    w.bv = in.get(p + "attention.self.value.bias", H);
    w.wo = in.get(p + "attention.output.dense.weight", H, H);
    w.bo = in.get(p + "attention.output.dense.bias", H);
    w.norm1_w = in.get(p + "attention.output.LayerNorm.weight", H);
    w.norm1_b = in.get(p + "attention.output.LayerNorm.bias", H);
    w.w_up = in.get(p + "intermediate.dense.weight", I, H);
    w.b_up = in.get(p + "intermediate.dense.bias", I);
    w.w_down = in.get(p + "output.dense.weight", H, I);
    w.b_down = in.get(p + "output.dense.bias", H);
    w.norm2_w = in.get(p + "output.LayerNorm.weight", H);
    w.norm2_b = in.get(p + "output.LayerNorm.bias", H);
    m.layers.push_back(w);
  }
  return m;  // BertModel has no LM head
}

}  // namespace

ModelWeights load_weights(const ModelConfig& cfg, Backend& be) {
  Loader in(cfg, be);
  switch (cfg.family) {
    case Family::Llama: return load_llama(cfg, in);
    case Family::GPT2: return load_gpt2(cfg, in);
    case Family::Bert: return load_bert(cfg, in);
  }
  throw UserError(cfg.dir + ": unsupported family");
}

}  // namespace lowsync
