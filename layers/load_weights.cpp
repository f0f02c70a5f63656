// Hugging Face checkpoint names -> this rank's ModelWeights, one function per family. Every
// tensor's shape is checked against config.json so that a mismatched checkpoint fails at load with
// the tensor's name. A rank copies only its share out of the memory-mapped files:
//   column-parallel (Q, K, V, FFN up/gate, their biases): the share's rows of W[out, in]
//   row-parallel (attention out, FFN down): the share's columns of W[out, in]
// (the shares come from the Plan: any contiguous ranges of heads, kv heads and FFN columns)
//   the LM head: whole, or the rank's vocabulary rows of it when the Plan splits the head
//   everything else (embeddings, norms, row-parallel biases): whole.
// A decoupled model's rank takes its sub-blocks whole.
#include <cmath>
#include <string>

#include "io/error.h"
#include "io/safetensors.h"
#include "layers/model.h"
#include "layers/narrow_float.h"

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
    return upload(name, ckpt_.read(prefix_ + name), cols ? rows : 1, cols ? cols : rows);
  }
  // An RMSNorm weight of n elements with the config's offset added: Gemma's norm scales by
  // (1 + weight); folding the 1 in here, once, lets every family share one rmsnorm kernel.
  Tensor norm_weight(const std::string& name, int64_t n) {
    check_shape(name, n, 0);
    std::vector<float> w = ckpt_.read(prefix_ + name);
    for (float& x : w) x += cfg_.norm_weight_offset;
    return upload(name, w, 1, n);
  }
  // Rows `part` of a [rows, cols] matrix (cols = 0: elements of a vector).
  Tensor rows(const std::string& name, int64_t rows, int64_t cols, Range part) {
    check_shape(name, rows, cols);
    return upload(name, ckpt_.read_rows(prefix_ + name, part.begin, part.begin + part.size), cols ? part.size : 1,
                  cols ? cols : part.size);
  }
  // Columns `part` of a [rows, cols] matrix.
  Tensor cols(const std::string& name, int64_t rows, int64_t cols, Range part) {
    check_shape(name, rows, cols);
    check_whole_blocks(name, part);
    return upload(name, ckpt_.read_cols(prefix_ + name, part.begin, part.begin + part.size), rows, part.size);
  }
  // GPT-2's Conv1D stores W^T [in, out]; lowsync keeps [out, in]. Takes outputs `out_part`
  // (column-parallel) and inputs `in_part` (row-parallel) of it.
  Tensor conv1d(const std::string& name, int64_t in, int64_t out, Range out_part, Range in_part) {
    check_shape(name, in, out);
    check_whole_blocks(name, in_part);
    std::vector<float> src = ckpt_.read_cols(prefix_ + name, out_part.begin, out_part.begin + out_part.size);
    std::vector<float> dst(out_part.size * in_part.size);
    for (int64_t i = 0; i < in_part.size; ++i)
      for (int64_t o = 0; o < out_part.size; ++o) dst[o * in_part.size + i] = src[(in_part.begin + i) * out_part.size + o];
    return upload(name, dst, out_part.size, in_part.size);
  }
  void set_prefix(std::string p) { prefix_ = std::move(p); }
  int64_t bytes() const { return bytes_; }

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
  // q8_0 quantises 32 consecutive values of a row together: a rank's slice of the rows must be whole
  // blocks of the whole row, so that its blocks are the checkpoint's (a tensor-parallel share).
  void check_whole_blocks(const std::string& name, Range part) {
    if (be_.weight_dtype() == DType::Q8_0 && (part.begin % 32 != 0 || part.size % 32 != 0))
      throw UserError(cfg_.dir + ": tensor '" + prefix_ + name + "': this rank's share is columns " +
                      std::to_string(part.begin) + ".." + std::to_string(part.begin + part.size - 1) +
                      ", not whole 32-value q8_0 blocks; q8_0 needs tensor-parallel shares (heads x head_dim, " +
                      "FFN columns) in multiples of 32: use tp 1 or weights.dtype: bf16");
  }
  // A matrix stored in fp16 must fit its range (a bf16 or fp32 one always fits bf16).
  Tensor upload(const std::string& name, const std::vector<float>& host, int64_t rows, int64_t cols) {
    if (rows > 1 && be_.weight_dtype() == DType::F16)
      for (size_t i = 0; i < host.size(); ++i)
        if (std::fabs(host[i]) > kHalfMax)
          throw UserError(cfg_.dir + ": tensor '" + prefix_ + name + "' holds " + std::to_string(host[i]) +
                          " at element " + std::to_string(i) + ", beyond fp16's range (65504); use weights.dtype: bf16 or fp32");
    if (rows > 1 && be_.weight_dtype() == DType::Q8_0 && cols % 32 != 0)
      throw UserError(cfg_.dir + ": tensor '" + prefix_ + name + "' has rows of " + std::to_string(cols) +
                      " values here, not a multiple of q8_0's 32-value blocks; use weights.dtype: bf16 or fp32");
    Tensor t = be_.upload_weight(host, rows, cols);
    bytes_ += t.bytes();
    return t;
  }
  const ModelConfig& cfg_;
  Backend& be_;
  CheckpointReader ckpt_;
  std::string prefix_;
  int64_t bytes_ = 0;
};

// Where a rank's share of a layer lies in the stored tensors: the rows/columns to take along each
// split dimension, and the stored sizes of those dimensions. A TP share is a slice of the full
// layer; a decoupled model's sub-block is stored on its own and taken whole.
struct Part {
  Range q, kv, ffn;
  int64_t q_total, kv_total, ffn_total;

  static Part tp_share(const ModelConfig& c, const LayerShare& s) {
    const int64_t d = c.head_dim;
    return {{s.heads.begin * d, s.heads.count * d}, {s.kv_heads.begin * d, s.kv_heads.count * d},
            {s.ffn.begin, s.ffn.count}, c.q_dim(), c.kv_dim(), c.intermediate};
  }
  static Part whole(const BlockShape& b) {
    return {{0, b.q_dim()}, {0, b.kv_dim()}, {0, b.intermediate}, b.q_dim(), b.kv_dim(), b.intermediate};
  }
};

// The llama family. Phi-3 stores q, k, v as one qkv_proj [q_dim + 2 kv_dim, H] and gate, up as one
// gate_up_proj [2 I, H]; a rank takes its rows of each part, so its share is the same as from
// separate tensors.
LayerWeights load_llama_layer(const ModelConfig& c, Loader& in, const std::string& p, const Part& s) {
  const int64_t H = c.hidden;
  LayerWeights w;
  w.norm1_w = in.norm_weight(p + "input_layernorm.weight", H);
  if (c.layout == Layout::Fused) {
    const int64_t Q = s.q_total, KV = s.kv_total, I = s.ffn_total;
    const std::string qkv = p + "self_attn.qkv_proj.weight", gate_up = p + "mlp.gate_up_proj.weight";
    w.wq = in.rows(qkv, Q + 2 * KV, H, s.q);
    w.wk = in.rows(qkv, Q + 2 * KV, H, {Q + s.kv.begin, s.kv.size});
    w.wv = in.rows(qkv, Q + 2 * KV, H, {Q + KV + s.kv.begin, s.kv.size});
    w.w_gate = in.rows(gate_up, 2 * I, H, s.ffn);
    w.w_up = in.rows(gate_up, 2 * I, H, {I + s.ffn.begin, s.ffn.size});
  } else {
    w.wq = in.rows(p + "self_attn.q_proj.weight", s.q_total, H, s.q);
    w.wk = in.rows(p + "self_attn.k_proj.weight", s.kv_total, H, s.kv);
    w.wv = in.rows(p + "self_attn.v_proj.weight", s.kv_total, H, s.kv);
    w.w_gate = in.rows(p + "mlp.gate_proj.weight", s.ffn_total, H, s.ffn);
    w.w_up = in.rows(p + "mlp.up_proj.weight", s.ffn_total, H, s.ffn);
  }
  w.wo = in.cols(p + "self_attn.o_proj.weight", H, s.q_total, s.q);
  if (c.attention_bias) {
    w.bq = in.rows(p + "self_attn.q_proj.bias", s.q_total, 0, s.q);
    w.bk = in.rows(p + "self_attn.k_proj.bias", s.kv_total, 0, s.kv);
    w.bv = in.rows(p + "self_attn.v_proj.bias", s.kv_total, 0, s.kv);
    if (in.has(p + "self_attn.o_proj.bias")) w.bo = in.whole(p + "self_attn.o_proj.bias", H);
  }
  w.norm2_w = in.norm_weight(p + "post_attention_layernorm.weight", H);
  w.w_down = in.cols(p + "mlp.down_proj.weight", H, s.ffn_total, s.ffn);
  return w;
}

LayerWeights load_gpt2_layer(const ModelConfig& c, Loader& in, const std::string& p, const Part& s) {
  const int64_t H = c.hidden, Q = s.q_total;
  const Range all_h{0, H};
  LayerWeights w;
  w.norm1_w = in.whole(p + "ln_1.weight", H);
  w.norm1_b = in.whole(p + "ln_1.bias", H);
  // c_attn holds q, k, v side by side along its output dimension.
  w.wq = in.conv1d(p + "attn.c_attn.weight", H, 3 * Q, {s.q.begin, s.q.size}, all_h);
  w.wk = in.conv1d(p + "attn.c_attn.weight", H, 3 * Q, {Q + s.kv.begin, s.kv.size}, all_h);
  w.wv = in.conv1d(p + "attn.c_attn.weight", H, 3 * Q, {2 * Q + s.kv.begin, s.kv.size}, all_h);
  w.bq = in.rows(p + "attn.c_attn.bias", 3 * Q, 0, {s.q.begin, s.q.size});
  w.bk = in.rows(p + "attn.c_attn.bias", 3 * Q, 0, {Q + s.kv.begin, s.kv.size});
  w.bv = in.rows(p + "attn.c_attn.bias", 3 * Q, 0, {2 * Q + s.kv.begin, s.kv.size});
  w.wo = in.conv1d(p + "attn.c_proj.weight", Q, H, all_h, s.q);
  w.bo = in.whole(p + "attn.c_proj.bias", H);
  w.norm2_w = in.whole(p + "ln_2.weight", H);
  w.norm2_b = in.whole(p + "ln_2.bias", H);
  w.w_up = in.conv1d(p + "mlp.c_fc.weight", H, s.ffn_total, s.ffn, all_h);
  w.b_up = in.rows(p + "mlp.c_fc.bias", s.ffn_total, 0, s.ffn);
  w.w_down = in.conv1d(p + "mlp.c_proj.weight", s.ffn_total, H, all_h, s.ffn);
  w.b_down = in.whole(p + "mlp.c_proj.bias", H);
  return w;
}

LayerWeights load_bert_layer(const ModelConfig& c, Loader& in, const std::string& p, const Part& s) {
  const int64_t H = c.hidden, Q = s.q_total;
  LayerWeights w;
  w.wq = in.rows(p + "attention.self.query.weight", Q, H, s.q);
  w.bq = in.rows(p + "attention.self.query.bias", Q, 0, s.q);
  w.wk = in.rows(p + "attention.self.key.weight", Q, H, s.kv);
  w.bk = in.rows(p + "attention.self.key.bias", Q, 0, s.kv);
  w.wv = in.rows(p + "attention.self.value.weight", Q, H, s.kv);
  w.bv = in.rows(p + "attention.self.value.bias", Q, 0, s.kv);
  w.wo = in.cols(p + "attention.output.dense.weight", H, Q, s.q);
  w.bo = in.whole(p + "attention.output.dense.bias", H);
  w.norm1_w = in.whole(p + "attention.output.LayerNorm.weight", H);
  w.norm1_b = in.whole(p + "attention.output.LayerNorm.bias", H);
  w.w_up = in.rows(p + "intermediate.dense.weight", s.ffn_total, H, s.ffn);
  w.b_up = in.rows(p + "intermediate.dense.bias", s.ffn_total, 0, s.ffn);
  w.w_down = in.cols(p + "output.dense.weight", H, s.ffn_total, s.ffn);
  w.b_down = in.whole(p + "output.dense.bias", H);
  w.norm2_w = in.whole(p + "output.LayerNorm.weight", H);
  w.norm2_b = in.whole(p + "output.LayerNorm.bias", H);
  return w;
}

using LayerLoader = LayerWeights (*)(const ModelConfig&, Loader&, const std::string&, const Part&);

// The part of the model one rank reads: its share of its stage's layers, and the ends of the model
// its stage holds.
struct RankPart {
  const LayerShare& share;
  Span layers;       // read now: the stage's layers held in memory (streamed ones come later)
  bool first, last;  // first stage: embeddings; last stage: final norm and LM head
  Span head;         // the LM head's vocabulary rows this rank computes
};

// Rows [begin, begin + count) of a weight, sharing its memory (a tied head's rows of the token
// embedding, which the first stage holds whole for the lookup). Weights are row-major in every
// backend; 16-bit ones (the CUDA backend's) take 2 bytes an element.
Tensor weight_rows(const Tensor& w, Span rows) {
  if (rows.begin == 0 && rows.count == w.rows) return w;
  Tensor t = w;
  t.ptr = static_cast<char*>(w.ptr) + w.row_bytes(rows.begin);
  t.rows = rows.count;
  return t;
}

// Every layer of this rank's stage: its TP share of `prefix{l}.`, or its sub-blocks `prefix{l}.sub.{r}.`
// (a decoupled model's coupled layer: the TP share its sub-blocks make, of `prefix{l}.`).
void load_layers(const ModelConfig& c, const RankPart& part, Loader& in, const std::string& prefix, LayerLoader load,
                 ModelWeights& m) {
  for (int l = part.layers.begin; l < part.layers.end(); ++l) {
    const std::string p = prefix + std::to_string(l) + ".";
    if (!c.bp.enabled()) {
      m.layers.push_back(load(c, in, p, Part::tp_share(c, part.share)));
      continue;
    }
    m.layers.emplace_back();
    m.sub_blocks.emplace_back();
    if (c.bp.is_coupled(l)) {
      m.layers.back() = load(c, in, p, Part::tp_share(c, part.share.coupled_share(c)));
      continue;
    }
    for (int r = part.share.sub_blocks.begin; r < part.share.sub_blocks.end(); ++r)
      m.sub_blocks.back().push_back(load(c, in, p + "sub." + std::to_string(r) + ".", Part::whole(BlockShape::sub_block(c, r))));
  }
}

ModelWeights load_llama(const ModelConfig& c, const RankPart& part, Loader& in) {
  const int64_t H = c.hidden;
  in.detect_prefix("embed_tokens.weight", {"model.", ""});
  ModelWeights m;
  if (part.first) m.tok_emb = in.whole("embed_tokens.weight", c.vocab, H);
  load_layers(c, part, in, "layers.", load_llama_layer, m);
  if (!part.last) return m;
  m.final_norm_w = in.norm_weight("norm.weight", H);
  const Range head{part.head.begin, part.head.count};
  if (c.tied_embeddings) {
    m.lm_head = part.first ? weight_rows(m.tok_emb, part.head) : in.rows("embed_tokens.weight", c.vocab, H, head);
  } else {
    in.set_prefix("");
    m.lm_head = in.rows("lm_head.weight", c.vocab, H, head);
  }
  return m;
}

ModelWeights load_gpt2(const ModelConfig& c, const RankPart& part, Loader& in) {
  const int64_t H = c.hidden;
  in.detect_prefix("wte.weight", {"transformer.", ""});
  ModelWeights m;
  if (part.first) m.tok_emb = in.whole("wte.weight", c.vocab, H);
  if (part.first) m.pos_emb = in.whole("wpe.weight", c.max_positions, H);
  load_layers(c, part, in, "h.", load_gpt2_layer, m);
  if (!part.last) return m;
  m.final_norm_w = in.whole("ln_f.weight", H);
  m.final_norm_b = in.whole("ln_f.bias", H);
  // GPT-2 ties its head to the token embedding.
  const Range head{part.head.begin, part.head.count};
  m.lm_head = part.first ? weight_rows(m.tok_emb, part.head) : in.rows("wte.weight", c.vocab, H, head);
  return m;
}

ModelWeights load_bert(const ModelConfig& c, const RankPart& part, Loader& in) {
  const int64_t H = c.hidden;
  in.detect_prefix("embeddings.word_embeddings.weight", {"", "bert."});
  ModelWeights m;
  if (part.first) {
    m.tok_emb = in.whole("embeddings.word_embeddings.weight", c.vocab, H);
    m.pos_emb = in.whole("embeddings.position_embeddings.weight", c.max_positions, H);
    m.type_emb = in.whole("embeddings.token_type_embeddings.weight", c.type_vocab, H);
    m.emb_norm_w = in.whole("embeddings.LayerNorm.weight", H);
    m.emb_norm_b = in.whole("embeddings.LayerNorm.bias", H);
  }
  load_layers(c, part, in, "encoder.layer.", load_bert_layer, m);
  return m;  // BertModel has no LM head
}

// Where each family's layers live in the checkpoint, and how to read one.
struct FamilyLayers {
  const char* probe;                           // a tensor that tells the key prefix
  const char* prefixes[2];                     // where it may be (the first: the canonical key)
  const char* layer_prefix;
  LayerLoader load;
};

FamilyLayers family_layers(Family f) {
  if (f == Family::Llama) return {"embed_tokens.weight", {"model.", ""}, "layers.", load_llama_layer};
  if (f == Family::GPT2) return {"wte.weight", {"transformer.", ""}, "h.", load_gpt2_layer};
  return {"embeddings.word_embeddings.weight", {"", "bert."}, "encoder.layer.", load_bert_layer};
}

}  // namespace

struct LayerSource::Impl {
  Impl(const ModelConfig& c, const LayerShare& s, Backend& be) : cfg(c), share(s), in(c, be), family(family_layers(c.family)) {
    in.detect_prefix(family.probe, {family.prefixes[0], family.prefixes[1]});
  }
  const ModelConfig& cfg;
  LayerShare share;
  Loader in;
  FamilyLayers family;
};

LayerSource::LayerSource(const ModelConfig& cfg, const LayerShare& share, Backend& be)
    : impl_(std::make_unique<Impl>(cfg, share, be)) {}
LayerSource::~LayerSource() = default;

LayerWeights LayerSource::load(int layer) {
  const int64_t before = impl_->in.bytes();
  LayerWeights w = impl_->family.load(impl_->cfg, impl_->in, impl_->family.layer_prefix + std::to_string(layer) + ".",
                                      Part::tp_share(impl_->cfg, impl_->share));
  bytes_ += impl_->in.bytes() - before;
  return w;
}

ModelWeights load_weights(const ModelConfig& cfg, const LayerShare& share, const Span& layers, int resident,
                          Backend& be, Span head) {
  Loader in(cfg, be);
  if (head.count == 0) head = {0, cfg.vocab};
  const RankPart part{share, {layers.begin, std::min(resident, layers.count)}, layers.begin == 0,
                      layers.end() == cfg.n_layers, head};
  ModelWeights m = cfg.family == Family::Llama ? load_llama(cfg, part, in)
                   : cfg.family == Family::GPT2 ? load_gpt2(cfg, part, in)
                                                : load_bert(cfg, part, in);
  m.bytes = in.bytes();
  return m;
}

}  // namespace lowsync
