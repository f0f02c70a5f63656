#include "io/model_config.h"

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
  if (model_type == "llama" || model_type == "mistral" || model_type == "qwen2") {
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
    m.activation = parse_activation(c.get_or<std::string>("hidden_act", "silu"), path);
    m.tied_embeddings = c.get_or<bool>("tie_word_embeddings", false);
    m.attention_bias = c.get_or<bool>("attention_bias", model_type == "qwen2");
    if (c.has("rope_scaling"))
      throw UserError(path + ": key 'rope_scaling' is set; scaled RoPE is not supported yet");
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
                    "'); supported: llama, gpt2, bert");
  }
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

}  // namespace lowsync
