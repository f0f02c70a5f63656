#include "io/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {
using json = nlohmann::json;

const char* family_name(Family f) {
  switch (f) {
    case Family::Llama: return "llama";
    case Family::GPT2: return "gpt2";
    case Family::Bert: return "bert";
  }
  return "?";
}

namespace {

// Sizes beyond these are refused as absurd before any arithmetic: every product of two of them
// (hidden x intermediate, vocab x hidden, heads x head_dim) fits comfortably in int64, and each
// fits the int the engine keeps it in.
constexpr int64_t kMaxSize = int64_t(1) << 24;        // hidden, heads, head_dim, FFN, vocab
constexpr int64_t kMaxPositions = int64_t(1) << 30;
// Checked in double after the sizes: 2^50 parameters (4 PiB of fp32) is far past any machine, and
// keeps the int64 parameter and byte counts from overflowing.
constexpr double kMaxParameters = 1125899906842624.0;

// A value as config.json spells it, short enough for an error line.
std::string shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

struct ConfigJson {
  const json& j;
  std::string path;
  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  template <class T>
  T get(const char* key) const {
    if (!has(key)) throw UserError(path + ": missing key '" + key + "'");
    try {
      return j[key].get<T>();
    } catch (const std::exception&) {
      throw UserError(path + ": key '" + key + "' has the wrong type");
    }
  }
  template <class T>
  T get_or(const char* key, T fallback) const {
    return has(key) ? get<T>(key) : fallback;
  }
  // An integer in [lo, hi]. A float (64.5), a string or an out-of-range value is refused rather
  // than converted: nlohmann's get<int> would truncate 64.5 and wrap 2^32 + 64 to 64.
  int integer(const char* key, int64_t lo, int64_t hi) const {
    if (!has(key)) throw UserError(path + ": missing key '" + key + "'");
    const json& v = j[key];
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t(hi) && int64_t(v.get<uint64_t>()) >= lo
                          : v.is_number_integer() ? v.get<int64_t>() >= lo && v.get<int64_t>() <= hi
                                                  : false;
    if (!in_range)
      throw UserError(path + ": key '" + key + "' is " + shown(v) + "; expected an integer in [" + std::to_string(lo) +
                      ", " + std::to_string(hi) + "]");
    return static_cast<int>(v.get<int64_t>());
  }
  // A model size: at least 1 (0 heads divide by zero; 0 FFN columns or token types leave nothing
  // to load) and at most kMaxSize.
  int size(const char* key, int64_t hi = kMaxSize) const { return integer(key, 1, hi); }
  int size_or(const char* key, int fallback, int64_t hi = kMaxSize) const { return has(key) ? size(key, hi) : fallback; }
  // A finite real number; `positive`: > 0 (RoPE's base), otherwise >= 0 (a norm's epsilon).
  float real_or(const char* key, float fallback, bool positive) const {
    if (!has(key)) return fallback;
    const json& v = j[key];
    const double x = v.is_number() ? v.get<double>() : std::nan("");
    const bool ok = std::isfinite(x) && (positive ? x > 0 : x >= 0) && x <= std::numeric_limits<float>::max();
    if (!ok)
      throw UserError(path + ": key '" + key + "' is " + shown(v) + "; expected a finite number " +
                      (positive ? "> 0" : ">= 0"));
    return static_cast<float>(x);
  }
  // A list of layer indices, each in [0, n_layers), strictly increasing (a decoupled model's coupled layers).
  std::vector<int> layer_indices(const char* key, int n_layers) const {
    const std::string expected = "; expected a list of layer indices in [0, " + std::to_string(n_layers) +
                                 "), in increasing order";
    if (!j[key].is_array()) throw UserError(path + ": key '" + key + "' is " + shown(j[key]) + expected);
    std::vector<int> out;
    for (const json& v : j[key]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= n_layers ||
          (!out.empty() && v.get<int64_t>() <= out.back()))
        throw UserError(path + ": key '" + key + "' holds " + shown(v) + expected);
      out.push_back(v.get<int>());
    }
    return out;
  }
  // A list of model sizes (a decoupled model's per-sub-block shares).
  std::vector<int> sizes(const char* key) const {
    if (!has(key) || !j[key].is_array()) throw UserError(path + ": key '" + key + "' must be a list of integers");
    std::vector<int> out;
    for (const json& v : j[key]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > kMaxSize)
        throw UserError(path + ": key '" + key + "' holds " + shown(v) + "; expected integers in [1, " +
                        std::to_string(kMaxSize) + "]");
      out.push_back(v.get<int>());
    }
    return out;
  }
};

// `hidden` split into `heads` heads: without an explicit head_dim the split must be exact (a
// fractional head would silently drop columns).
void require_divisible(const std::string& path, const char* hidden_key, int hidden, const char* heads_key, int heads,
                       const char* hint) {
  if (hidden % heads)
    throw UserError(path + ": key '" + hidden_key + "' (" + std::to_string(hidden) + ") is not divisible by '" + heads_key +
                    "' (" + std::to_string(heads) + ")" + hint);
}

Activation parse_activation(const std::string& name, const std::string& path) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::GeluTanh;
  if (name == "gelu") return Activation::GeluErf;
  throw UserError(path + ": activation '" + name + "' is not supported; expected silu, gelu or gelu_new");
}

// eos_token_id: one id or a list of non-negative integers. None when absent. An id beyond the
// vocabulary can never be generated, so it is dropped rather than refused: transformers' own
// default GPT-2 config carries 50256 into models with small vocabularies.
std::vector<int> eos_ids(const ConfigJson& c, int vocab) {
  std::vector<int> ids;
  if (!c.has("eos_token_id")) return ids;
  const json& e = c.j["eos_token_id"];
  for (const json& id : e.is_array() ? e : json::array({e})) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      throw UserError(c.path + ": key 'eos_token_id' is " + shown(e) + "; expected a token id or a list of token ids (>= 0)");
    if (id.get<int64_t>() < vocab) ids.push_back(id.get<int>());
  }
  return ids;
}

bool is_llama_shaped(const std::string& model_type) {
  return model_type == "llama" || model_type == "mistral" || model_type == "qwen2" || model_type == "phi3" ||
         model_type == "gemma";
}

// rope_scaling as LlamaConfig reads it (4.44 also accepts the older key 'type' for 'rope_type').
// linear: every inverse frequency divided by `factor`; llama3: only the long wavelengths, with a
// smooth band between (layers/rope_frequencies.cpp). Other types are refused by name.
RopeScaling read_rope_scaling(const ConfigJson& c) {
  RopeScaling r;
  if (!c.has("rope_scaling")) return r;
  const json& j = c.j["rope_scaling"];
  if (!j.is_object()) throw UserError(c.path + ": key 'rope_scaling' is " + shown(j) + "; expected an object or null");
  const ConfigJson s{j, c.path + " (key 'rope_scaling')"};
  const std::string type = s.has("rope_type") ? s.get<std::string>("rope_type") : s.get_or<std::string>("type", "");
  if (type == "default") return r;
  if (type == "linear") {
    r.type = RopeScaling::Type::Linear;
  } else if (type == "llama3") {
    r.type = RopeScaling::Type::Llama3;
    const bool complete = s.has("low_freq_factor") && s.has("high_freq_factor") && s.has("original_max_position_embeddings");
    if (complete) {
      r.low_freq_factor = s.real_or("low_freq_factor", 1.f, true);
      r.high_freq_factor = s.real_or("high_freq_factor", 4.f, true);
      r.original_max_positions = s.size("original_max_position_embeddings", kMaxPositions);
    }
    if (!complete || !(r.high_freq_factor > r.low_freq_factor))
      throw UserError(c.path + ": key 'rope_scaling' of type llama3 needs low_freq_factor and high_freq_factor "
                      "(> low_freq_factor) and original_max_position_embeddings");
  } else if (type == "dynamic") {
    throw UserError(c.path + ": key 'rope_scaling' has type 'dynamic' (NTK scaling that changes with the sequence "
                    "length); not supported: supported types are linear and llama3");
  } else {
    throw UserError(c.path + ": key 'rope_scaling' has type '" + type + "'; not supported: supported types are linear "
                    "and llama3");
  }
  if (!s.has("factor")) throw UserError(c.path + ": key 'rope_scaling' of type " + type + " needs a 'factor'");
  r.factor = s.real_or("factor", 1.f, true);
  return r;
}

// What distinguishes the LLaMA-shaped families, after the shared sizes are read (transformers 4.44).
void read_llama_variant(const ConfigJson& c, const std::string& model_type, ModelConfig& m) {
  const std::string& path = c.path;
  m.tied_embeddings = c.get_or<bool>("tie_word_embeddings", model_type == "gemma");
  if (model_type == "gemma") {
    // GemmaMLP ignores hidden_act: hidden_activation, or gelu_pytorch_tanh when it is null.
    m.activation = parse_activation(c.get_or<std::string>("hidden_activation", "gelu_pytorch_tanh"), path);
    m.embed_scale = static_cast<float>(std::sqrt(double(m.hidden)));  // as torch.tensor(hidden**0.5, float32)
    m.norm_weight_offset = 1.f;  // GemmaRMSNorm: x_hat * (1 + weight)
  } else {
    m.activation = parse_activation(c.get_or<std::string>("hidden_act", "silu"), path);
  }
  // Qwen2Attention always has q/k/v biases (4.44 has no key for it); Phi-3 and Mistral never.
  if (model_type == "qwen2") m.attention_bias = true;
  else if (model_type == "llama" || model_type == "gemma") m.attention_bias = c.get_or<bool>("attention_bias", false);
  if (model_type == "phi3") m.layout = Layout::Fused;
  if (model_type == "llama") {
    m.rope_scaling = read_rope_scaling(c);
    if (c.get_or<bool>("mlp_bias", false))
      throw UserError(path + ": key 'mlp_bias' is true; FFN biases are not supported for llama");
  } else if (c.has("rope_scaling")) {
    // Phi-3's long-context checkpoints use 'longrope' (or the older 'su', 'yarn'); Mistral, Qwen2
    // and Gemma have no rope_scaling in 4.44 (transformers would ignore it; lowsync will not guess).
    const json& j = c.j["rope_scaling"];
    const std::string type = j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>()
                             : j.is_object() && j.contains("rope_type") && j["rope_type"].is_string()
                                 ? j["rope_type"].get<std::string>()
                                 : shown(j);
    throw UserError(path + ": key 'rope_scaling' has type '" + type + "'; not supported for " + model_type +
                    " (only llama's linear and llama3 are)");
  }
  // Sliding-window attention. Mistral: every layer, in every attention implementation, which
  // lowsync implements. Qwen2 (use_sliding_window: layers >= max_window_layers) and Phi-3: only
  // transformers' flash-attention path applies the window, its CPU path does not, so the two
  // disagree once a sequence is longer than the window; lowsync then takes the window as the
  // context length, where both agree (prompts longer are refused, generation stops there).
  if (!c.has("sliding_window")) return;
  const int window = c.size("sliding_window", kMaxPositions);
  if (model_type == "mistral") {
    m.sliding_window = window;
  } else if (model_type == "phi3" ||
             (model_type == "qwen2" && c.get_or<bool>("use_sliding_window", false) &&
              c.size_or("max_window_layers", 28, kMaxPositions) < m.n_layers)) {
    if (window < m.max_positions) {
      m.max_positions = window;
      m.positions_note = "set by its sliding_window: transformers 4.44 applies " + model_type +
                         "'s window only under flash-attention, so lowsync stays within it";
    }
  }
}

// Keys of later or other architectures that change the math and that no family above reads: a
// config.json carrying one is refused by name rather than run as if it were absent.
//
// Walked through transformers 4.44's config classes (keys that only set training, dropout,
// initialisation, caching or token ids other than EOS are omitted):
//   LlamaConfig   hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
//                 num_key_value_heads, hidden_act, max_position_embeddings, rms_norm_eps, rope_theta,
//                 tie_word_embeddings, attention_bias: read. rope_scaling: linear, llama3 read,
//                 dynamic and others refused. mlp_bias true: refused. pretraining_tp: only splits
//                 the products (rounding), ignored.
//   MistralConfig as llama, plus head_dim and sliding_window (implemented); no rope_scaling.
//   Qwen2Config   as llama with q/k/v biases always; use_sliding_window, sliding_window,
//                 max_window_layers: the window caps the context (see read_llama_variant).
//   Phi3Config    as llama with fused qkv_proj / gate_up_proj; rope_scaling (longrope, su, yarn)
//                 refused, original_max_position_embeddings used only by it; sliding_window as Qwen2's.
//   GemmaConfig   as llama plus head_dim, hidden_activation (hidden_act ignored, as transformers
//                 does), embeddings times sqrt(hidden), norm weight + 1, tied by default.
//   GPT2Config    n_embd, n_layer, n_head, n_inner, n_positions, activation_function,
//                 layer_norm_epsilon: read; scale_attn_weights false, scale_attn_by_inverse_layer_idx
//                 true and tie_word_embeddings false refused; reorder_and_upcast_attn: numerics
//                 only; summary_*: heads lowsync does not run.
//   BertConfig    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
//                 hidden_act, max_position_embeddings, type_vocab_size, layer_norm_eps: read;
//                 position_embedding_type other than absolute refused.
// Below: keys of Gemma 2, Phi, GPT-NeoX, Falcon, Cohere and others that a converted or hand-edited
// config might carry.
void refuse_unhandled_keys(const ConfigJson& c, const std::string& model_type) {
  static const char* const kChangesMath[] = {
      "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "logit_scale",
      "rotary_pct", "rope_pct", "use_parallel_residual", "parallel_attn", "new_decoder_architecture",
      "alibi", "qk_layernorm", "use_qk_norm", "clip_qkv", "embedding_multiplier", "residual_multiplier",
      "attention_multiplier", "logits_scaling", "attention_chunk_size", "rope_local_base_freq",
      "num_experts", "num_local_experts", "n_routed_experts"};
  for (const char* key : kChangesMath)
    if (c.has(key))
      throw UserError(c.path + ": key '" + key + "' is set; " + model_type + " with '" + key +
                      "' changes the model's math and is not supported");
  if (c.has("partial_rotary_factor")) {
    const json& v = c.j["partial_rotary_factor"];
    if (!v.is_number() || v.get<double>() != 1.0)
      throw UserError(c.path + ": key 'partial_rotary_factor' is " + shown(v) +
                      "; expected 1 (RoPE on part of each head is not supported)");
  }
  // Newer transformers write every layer's kind; only full attention everywhere is the math above.
  if (c.has("layer_types")) {
    const json& v = c.j["layer_types"];
    bool all_full = v.is_array();
    if (all_full)
      for (const json& t : v) all_full = all_full && t.is_string() && t.get<std::string>() == "full_attention";
    if (!all_full)
      throw UserError(c.path + ": key 'layer_types' is " + shown(v) +
                      "; only 'full_attention' layers are supported (per-layer sliding windows are not)");
  }
  if (model_type != "qwen2" && c.get_or<bool>("use_sliding_window", false))
    throw UserError(c.path + ": key 'use_sliding_window' is true; not supported for " + model_type);
}

}  // namespace

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  const std::string text = read_regular_file(path, "the model's config.json");
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    throw UserError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw UserError(path + ": expected a JSON object of keys to values");
  ConfigJson c{j, path};
  ModelConfig m;
  m.dir = model_dir;
  m.json_text = text;
  std::string model_type = c.get_or<std::string>("model_type", "");
  auto archs = c.get_or<std::vector<std::string>>("architectures", {});
  m.architecture = archs.empty() ? model_type : archs[0];

  // Every size is read and range-checked before anything divides by it or multiplies it.
  if (is_llama_shaped(model_type)) {
    m.family = Family::Llama;
    m.hidden = c.size("hidden_size");
    m.n_layers = c.size("num_hidden_layers");
    m.n_heads = c.size("num_attention_heads");
    m.n_kv_heads = c.size_or("num_key_value_heads", m.n_heads);
    if (c.has("head_dim")) {
      m.head_dim = c.size("head_dim");
    } else {
      require_divisible(path, "hidden_size", m.hidden, "num_attention_heads", m.n_heads, "; expected a multiple, or a 'head_dim'");
      m.head_dim = m.hidden / m.n_heads;
    }
    // RoPE rotates pairs of a head's dimensions.
    if (m.head_dim % 2)
      throw UserError(path + ": head dimension " + std::to_string(m.head_dim) +
                      " is odd; rotary position embeddings need an even head_dim");
    m.intermediate = c.size("intermediate_size");
    m.vocab = c.size("vocab_size");
    m.max_positions = c.size_or("max_position_embeddings", 2048, kMaxPositions);
    m.norm_eps = c.real_or("rms_norm_eps", 1e-6f, false);
    m.rope_theta = c.real_or("rope_theta", 10000.f, true);
    read_llama_variant(c, model_type, m);
  } else if (model_type == "gpt2") {
    m.family = Family::GPT2;
    m.hidden = c.size("n_embd");
    m.n_layers = c.size("n_layer");
    m.n_heads = c.size("n_head");
    require_divisible(path, "n_embd", m.hidden, "n_head", m.n_heads, "; expected a multiple");
    m.n_kv_heads = m.n_heads;
    m.head_dim = m.hidden / m.n_heads;
    m.intermediate = c.has("n_inner") ? c.size("n_inner") : 4 * m.hidden;
    if (m.intermediate > kMaxSize)
      throw UserError(path + ": 4 x n_embd = " + std::to_string(m.intermediate) + " FFN columns; expected at most " +
                      std::to_string(kMaxSize) + " (give a smaller 'n_inner')");
    m.vocab = c.size("vocab_size");
    m.max_positions = c.size("n_positions", kMaxPositions);
    m.norm_eps = c.real_or("layer_norm_epsilon", 1e-5f, false);
    m.activation = parse_activation(c.get_or<std::string>("activation_function", "gelu_new"), path);
    m.tied_embeddings = c.get_or<bool>("tie_word_embeddings", true);
    m.attention_bias = true;
    // GPT2Attention: scores divided by sqrt(head_dim) unless scale_attn_weights is false, and also
    // by (layer + 1) when scale_attn_by_inverse_layer_idx is true. lowsync does the former only.
    if (!c.get_or<bool>("scale_attn_weights", true))
      throw UserError(path + ": key 'scale_attn_weights' is false; unscaled GPT-2 attention is not supported");
    if (c.get_or<bool>("scale_attn_by_inverse_layer_idx", false))
      throw UserError(path + ": key 'scale_attn_by_inverse_layer_idx' is true; attention scaled by layer is not supported");
    if (!m.tied_embeddings)
      throw UserError(path + ": key 'tie_word_embeddings' is false; lowsync reads GPT-2's head from its token embedding");
  } else if (model_type == "bert") {
    m.family = Family::Bert;
    m.hidden = c.size("hidden_size");
    m.n_layers = c.size("num_hidden_layers");
    m.n_heads = c.size("num_attention_heads");
    require_divisible(path, "hidden_size", m.hidden, "num_attention_heads", m.n_heads, "; expected a multiple");
    m.n_kv_heads = m.n_heads;
    m.head_dim = m.hidden / m.n_heads;
    m.intermediate = c.size("intermediate_size");
    m.vocab = c.size("vocab_size");
    m.max_positions = c.size("max_position_embeddings", kMaxPositions);
    m.type_vocab = c.size_or("type_vocab_size", 2);
    m.norm_eps = c.real_or("layer_norm_eps", 1e-12f, false);
    m.activation = parse_activation(c.get_or<std::string>("hidden_act", "gelu"), path);
    m.attention_bias = true;
    std::string pos = c.get_or<std::string>("position_embedding_type", "absolute");
    if (pos != "absolute")
      throw UserError(path + ": position_embedding_type '" + pos + "' is not supported; expected absolute");
  } else {
    throw UserError(path + ": unknown architecture '" + m.architecture + "' (model_type '" + model_type +
                    "'); supported: llama, mistral, qwen2, phi3, gemma, gpt2, bert");
  }
  refuse_unhandled_keys(c, model_type);
  if (m.n_heads % m.n_kv_heads)
    throw UserError(path + ": key 'num_attention_heads' (" + std::to_string(m.n_heads) +
                    ") is not a multiple of 'num_key_value_heads' (" + std::to_string(m.n_kv_heads) +
                    "); every key/value head serves the same number of query heads");
  if (int64_t(m.n_heads) * m.head_dim > kMaxSize)
    throw UserError(path + ": " + std::to_string(m.n_heads) + " heads of " + std::to_string(m.head_dim) +
                    " dimensions; expected at most " + std::to_string(kMaxSize) + " in all");
  {
    const double H = m.hidden, I = m.intermediate, Q = double(m.n_heads) * m.head_dim, V = m.vocab;
    const double estimate = m.n_layers * (2 * H * Q + 2 * H * Q + 3 * H * I) + 2 * V * H + double(m.max_positions) * H +
                            double(m.type_vocab) * H;
    if (estimate > kMaxParameters) {
      char n[32];
      std::snprintf(n, sizeof n, "%.3g", estimate);
      throw UserError(path + ": the sizes give about " + n + " parameters; expected at most 2^50 (sizes too large)");
    }
  }

  if (c.has("bp")) {
    if (!j["bp"].is_object()) throw UserError(path + ": key 'bp' must be an object");
    const json& b = j["bp"];
    ConfigJson bc{b, path + " (key 'bp')"};
    DecoupledSpec& d = m.bp;
    d.sub_blocks = bc.size("sub_blocks");
    d.sync_every = bc.size("sync_every");
    if (bc.has("merge")) {
      const json& mv = b["merge"];
      if (mv == "delta")
        d.merge = DecoupledSpec::Merge::Delta;
      else if (mv == "mean")
        d.merge = DecoupledSpec::Merge::Mean;
      else
        throw UserError(bc.path + ": key 'merge' is " + shown(mv) + "; expected \"delta\" or \"mean\"");
    }
    d.heads = bc.sizes("heads");
    d.kv_heads = bc.has("kv_heads") ? bc.sizes("kv_heads") : d.heads;
    d.ffn = bc.sizes("ffn");
    auto sum = [](const std::vector<int>& v) { int64_t s = 0; for (int x : v) s += x; return s; };
    const size_t P = static_cast<size_t>(d.sub_blocks);
    if (d.heads.size() != P || d.kv_heads.size() != P || d.ffn.size() != P)
      throw UserError(path + ": key 'bp' needs sub_blocks >= 1, sync_every >= 1 and heads, kv_heads, ffn lists of sub_blocks entries");
    if (sum(d.heads) != m.n_heads || sum(d.kv_heads) != m.n_kv_heads || sum(d.ffn) != m.intermediate)
      throw UserError(path + ": key 'bp': heads, kv_heads and ffn must sum to the model's num_attention_heads, "
                      "num_key_value_heads and intermediate size");
    for (size_t r = 0; r < P; ++r)
      if (d.heads[r] % d.kv_heads[r])
        throw UserError(path + ": key 'bp': sub-block " + std::to_string(r) + " has " + std::to_string(d.heads[r]) +
                        " heads for " + std::to_string(d.kv_heads[r]) + " key/value heads; expected a multiple");
    if (bc.has("coupled")) {
      d.coupled = bc.layer_indices("coupled", m.n_layers);
      // A coupled layer's tensor-parallel share is its rank's sub-blocks' heads and kv heads together,
      // which is a valid share only if every sub-block keeps the model's query heads per kv head.
      const int group = m.n_heads / m.n_kv_heads;
      for (size_t r = 0; r < P && !d.coupled.empty(); ++r)
        if (d.heads[r] != d.kv_heads[r] * group)
          throw UserError(path + ": key 'bp': sub-block " + std::to_string(r) + " has " + std::to_string(d.heads[r]) +
                          " heads for " + std::to_string(d.kv_heads[r]) + " key/value heads; coupled layers need " +
                          std::to_string(group) + " per key/value head, as in the model");
    }
  }

  if (c.has("lowsync_spd")) {
    if (!j["lowsync_spd"].is_object()) throw UserError(path + ": key 'lowsync_spd' must be an object");
    const ConfigJson sc{j["lowsync_spd"], path + " (key 'lowsync_spd')"};
    SpdCheckpoint& s = m.spd_checkpoint;
    s.tp = sc.integer("tp", 2, kMaxSize);
    s.heads = sc.sizes("heads");
    s.ffn = sc.sizes("ffn");
    if (!sc.has("drop") || !sc.j["drop"].is_array())
      throw UserError(path + ": key 'lowsync_spd': 'drop' must be a list of layer numbers");
    for (const json& v : sc.j["drop"]) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= m.n_layers ||
          (!s.drop.empty() && v.get<int64_t>() <= s.drop.back()))
        throw UserError(path + ": key 'lowsync_spd': 'drop' holds " + shown(v) + "; expected ascending layers in [0, " +
                        std::to_string(m.n_layers - 1) + "]");
      s.drop.push_back(v.get<int>());
    }
    int64_t heads = 0, ffn = 0;
    for (int h : s.heads) heads += h;
    for (int f : s.ffn) ffn += f;
    if (s.heads.size() != size_t(s.tp) || s.ffn.size() != size_t(s.tp) || heads != m.n_heads || ffn != m.intermediate)
      throw UserError(path + ": key 'lowsync_spd': 'heads' and 'ffn' must list tp entries summing to the model's " +
                      "num_attention_heads and intermediate size");
  }

  m.eos_token_ids = eos_ids(c, m.vocab);
  // As transformers' generate(): generation_config.json, where it gives eos_token_id, overrides
  // config.json's (chat models list their end-of-turn token there).
  const std::string gen_path = (std::filesystem::path(model_dir) / "generation_config.json").string();
  if (std::filesystem::exists(gen_path)) {
    json g;
    try {
      g = json::parse(read_regular_file(gen_path, "the model's generation_config.json"));
    } catch (const json::exception& e) {
      throw UserError(gen_path + ": not valid JSON (" + e.what() + ")");
    }
    if (!g.is_object()) throw UserError(gen_path + ": expected a JSON object of keys to values");
    const ConfigJson gc{g, gen_path};
    if (gc.has("eos_token_id")) m.eos_token_ids = eos_ids(gc, m.vocab);
  }
  return m;
}

bool DecoupledSpec::is_coupled(int layer) const {
  return std::find(coupled.begin(), coupled.end(), layer) != coupled.end();
}

std::vector<DecoupledSpec::Segment> DecoupledSpec::segments(int n_layers) const {
  std::vector<Segment> out;
  for (int l = 0; l < n_layers;) {
    if (is_coupled(l)) {
      out.push_back({l, l + 1, true});
      ++l;
      continue;
    }
    int end = l;
    while (end < n_layers && end - l < sync_every && !is_coupled(end)) ++end;
    out.push_back({l, end, false});
    l = end;
  }
  return out;
}

int64_t ModelConfig::parameter_count() const {
  const int64_t H = hidden, I = intermediate, V = vocab;
  int64_t per_layer = H * q_dim() + 2 * H * kv_dim() + q_dim() * H;  // attention
  per_layer += (gated_ffn() ? 3 : 2) * H * I;                        // FFN
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim() + H;
  if (family != Family::Llama) per_layer += I + H + 4 * H;           // FFN biases, 2 LayerNorms
  else per_layer += 2 * H;                                            // 2 RMSNorms
  int64_t total = per_layer * n_layers + V * H;                       // + token embeddings
  if (family == Family::GPT2) total += int64_t(max_positions) * H + 2 * H;
  if (family == Family::Bert) total += int64_t(max_positions) * H + int64_t(type_vocab) * H + 2 * H;
  if (family == Family::Llama) total += H + (tied_embeddings ? 0 : V * H);
  return total;
}

int64_t ModelConfig::vector_parameter_count() const {
  const int64_t H = hidden;
  int64_t per_layer = family != Family::Llama ? intermediate + H + 4 * H : 2 * H;  // biases, norms
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim() + H;
  if (family == Family::Llama) return per_layer * n_layers + H;  // + final norm
  return per_layer * n_layers + 2 * H;                            // + final or embedding LayerNorm
}

}  // namespace lowsync
