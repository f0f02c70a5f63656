#include "io/model_config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"

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

struct ConfigJson {
  const json& j;
  std::string path;
  template <class T>
  T get(const char* key) const {
    if (!j.contains(key) || j[key].is_null())
      throw UserError(path + ": missing key '" + key + "'");
    try {
      return j[key].get<T>();
    } catch (const std::exception&) {
      throw UserError(path + ": key '" + key + "' has the wrong type");
    }
  }
  template <class T>
  T get_or(const char* key, T fallback) const {
    return (j.contains(key) && !j[key].is_null()) ? get<T>(key) : fallback;
  }
};

Activation parse_activation(const std::string& name, const std::string& path) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return Activation::GeluTanh;
  if (name == "gelu") return Activation::GeluErf;
  throw UserError(path + ": activation '" + name + "' is not supported; expected silu, gelu or gelu_new");
}

}  // namespace

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) throw UserError(path + ": cannot open the model's config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  json j;
  try {
    j = json::parse(ss.str());
  } catch (const std::exception& e) {
    throw UserError(path + ": not valid JSON (" + e.what() + ")");
  }
  ConfigJson c{j, path};
  ModelConfig m;
  m.dir = model_dir;
  m.json_text = ss.str();
  std::string model_type = c.get_or<std::string>("model_type", "");
  auto archs = c.get_or<std::vector<std::string>>("architectures", {});
  m.architecture = archs.empty() ? model_type : archs[0];

  if (model_type == "llama" || model_type == "mistral" || model_type == "qwen2") {
    m.family = Family::Llama;
    m.hidden = c.get<int>("hidden_size");
    m.n_layers = c.get<int>("num_hidden_layers");
    m.n_heads = c.get<int>("num_attention_heads");
    m.n_kv_heads = c.get_or<int>("num_key_value_heads", m.n_heads);
    m.head_dim = c.get_or<int>("head_dim", m.hidden / m.n_heads);
    m.intermediate = c.get<int>("intermediate_size");
    m.vocab = c.get<int>("vocab_size");
    m.max_positions = c.get_or<int>("max_position_embeddings", 2048);
    m.norm_eps = c.get_or<float>("rms_norm_eps", 1e-6f);
    m.rope_theta = c.get_or<float>("rope_theta", 10000.f);
    m.activation = parse_activation(c.get_or<std::string>("hidden_act", "silu"), path);
    m.tied_embeddings = c.get_or<bool>("tie_word_embeddings", false);
    m.attention_bias = c.get_or<bool>("attention_bias", model_type == "qwen2");
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
      throw UserError(path + ": key 'rope_scaling' is set; scaled RoPE is not supported yet");
  } else if (model_type == "gpt2") {
    m.family = Family::GPT2;
    m.hidden = c.get<int>("n_embd");
    m.n_layers = c.get<int>("n_layer");
    m.n_heads = c.get<int>("n_head");
    m.n_kv_heads = m.n_heads;
    m.head_dim = m.hidden / m.n_heads;
    m.intermediate = c.get_or<int>("n_inner", 4 * m.hidden);
    m.vocab = c.get<int>("vocab_size");
    m.max_positions = c.get<int>("n_positions");
    m.norm_eps = c.get_or<float>("layer_norm_epsilon", 1e-5f);
    m.activation = parse_activation(c.get_or<std::string>("activation_function", "gelu_new"), path);
    m.tied_embeddings = c.get_or<bool>("tie_word_embeddings", true);
    m.attention_bias = true;
  } else if (model_type == "bert") {
    m.family = Family::Bert;
    m.hidden = c.get<int>("hidden_size");
    m.n_layers = c.get<int>("num_hidden_layers");
    m.n_heads = c.get<int>("num_attention_heads");
    m.n_kv_heads = m.n_heads;
    m.head_dim = m.hidden / m.n_heads;
    m.intermediate = c.get<int>("intermediate_size");
    m.vocab = c.get<int>("vocab_size");
    m.max_positions = c.get<int>("max_position_embeddings");
    m.type_vocab = c.get_or<int>("type_vocab_size", 2);
    m.norm_eps = c.get_or<float>("layer_norm_eps", 1e-12f);
    m.activation = parse_activation(c.get_or<std::string>("hidden_act", "gelu"), path);
    m.attention_bias = true;
    std::string pos = c.get_or<std::string>("position_embedding_type", "absolute");
    if (pos != "absolute")
      throw UserError(path + ": position_embedding_type '" + pos + "' is not supported; expected absolute");
  } else {
    throw UserError(path + ": unknown architecture '" + m.architecture + "' (model_type '" + model_type +
                    "'); supported: llama, gpt2, bert");
  }
  if (m.hidden <= 0 || m.n_layers <= 0 || m.n_heads <= 0 || m.n_kv_heads <= 0 || m.n_heads % m.n_kv_heads)
    throw UserError(path + ": inconsistent sizes (hidden, layers, heads, key/value heads)");

  if (j.contains("bp") && !j["bp"].is_null()) {
    const json& b = j["bp"];
    ConfigJson bc{b, path + " (key 'bp')"};
    DecoupledSpec& d = m.bp;
    d.sub_blocks = bc.get<int>("sub_blocks");
    d.sync_every = bc.get<int>("sync_every");
    d.heads = bc.get<std::vector<int>>("heads");
    d.kv_heads = bc.get_or<std::vector<int>>("kv_heads", d.heads);
    d.ffn = bc.get<std::vector<int>>("ffn");
    auto sum = [](const std::vector<int>& v) { int s = 0; for (int x : v) s += x; return s; };
    const size_t P = static_cast<size_t>(d.sub_blocks);
    if (d.sub_blocks < 1 || d.sync_every < 1 || d.heads.size() != P || d.kv_heads.size() != P || d.ffn.size() != P)
      throw UserError(path + ": key 'bp' needs sub_blocks >= 1, sync_every >= 1 and heads, kv_heads, ffn lists of sub_blocks entries");
    if (sum(d.heads) != m.n_heads || sum(d.kv_heads) != m.n_kv_heads || sum(d.ffn) != m.intermediate)
      throw UserError(path + ": key 'bp': heads, kv_heads and ffn must sum to the model's num_attention_heads, "
                      "num_key_value_heads and intermediate size");
    for (size_t r = 0; r < P; ++r)
      if (d.kv_heads[r] < 1 || d.heads[r] % d.kv_heads[r])
        throw UserError(path + ": key 'bp': sub-block " + std::to_string(r) + " has " + std::to_string(d.heads[r]) +
                        " heads for " + std::to_string(d.kv_heads[r]) + " key/value heads; expected a multiple");
  }

  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    if (j["eos_token_id"].is_array())
      m.eos_token_ids = j["eos_token_id"].get<std::vector<int>>();
    else
      m.eos_token_ids = {j["eos_token_id"].get<int>()};
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
