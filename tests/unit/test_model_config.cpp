// config.json validation (issue 14): every size is checked before arithmetic uses it, and
// impossible values are refused naming the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/error.h"
#include "io/model_config.h"

using namespace lowsync;
namespace fs = std::filesystem;

namespace {
const char* kLlama =
    R"("model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,)"
    R"( "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 256, "max_position_embeddings": 128)";

// The error of loading a LLaMA config with `extra` keys (later keys win), or "" if it loads.
std::string load_error(const std::string& extra) {
  static int n = 0;
  fs::path dir = fs::temp_directory_path() / ("lowsync_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{" << kLlama << extra << "}";
  try {
    load_model_config(dir.string());
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ModelConfig, ValidConfigLoads) { EXPECT_EQ(load_error(""), ""); }

TEST(ModelConfig, BadSizesAndValuesNameTheKey) {
  const struct {
    const char* extra;
    const char* needle;
  } cases[] = {
      {R"(, "num_attention_heads": 0)", "'num_attention_heads' is 0"},
      {R"(, "num_key_value_heads": 0)", "'num_key_value_heads' is 0"},
      {R"(, "intermediate_size": -1)", "'intermediate_size' is -1"},
      {R"(, "hidden_size": 64.5)", "'hidden_size' is 64.5"},
      {R"(, "hidden_size": 4294967360)", "'hidden_size' is 4294967360"},
      {R"(, "num_attention_heads": 5)", "not divisible by 'num_attention_heads'"},
      {R"(, "num_key_value_heads": 3)", "'num_key_value_heads' (3)"},
      {R"(, "head_dim": 15)", "odd"},
      {R"(, "rope_theta": 0)", "'rope_theta' is 0"},
      {R"(, "rms_norm_eps": -0.001)", "'rms_norm_eps'"},
      {R"(, "eos_token_id": "x")", "'eos_token_id'"},
      {R"(, "eos_token_id": [1, -3])", "'eos_token_id'"},
      {R"(, "hidden_size": 16000000, "intermediate_size": 16000000, "num_hidden_layers": 60000, "num_attention_heads": 1, "num_key_value_heads": 1)",
       "parameters"},
  };
  for (const auto& c : cases) {
    const std::string msg = load_error(c.extra);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.extra << " -> " << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  }
  // With an explicit head_dim the hidden size need not divide.
  EXPECT_EQ(load_error(R"(, "num_attention_heads": 5, "num_key_value_heads": 5, "head_dim": 16)"), "");
}

namespace {
// The LLaMA config above with `extra` keys (later keys win), loaded.
ModelConfig load_with(const std::string& extra) {
  static int n = 0;
  fs::path dir = fs::temp_directory_path() / ("lowsync_cfgv_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{" << kLlama << extra << "}";
  return load_model_config(dir.string());
}
}  // namespace

// The checkpoint families after LLaMA: what each config key turns into.
TEST(ModelConfig, LlamaShapedFamilies) {
  const ModelConfig mistral = load_with(R"(, "model_type": "mistral", "sliding_window": 4096)");
  EXPECT_EQ(mistral.sliding_window, 4096);
  EXPECT_EQ(mistral.max_positions, 128);
  EXPECT_EQ(load_with(R"(, "model_type": "mistral", "sliding_window": null)").sliding_window, 0);

  const ModelConfig qwen2 = load_with(R"(, "model_type": "qwen2", "attention_bias": false)");
  EXPECT_TRUE(qwen2.attention_bias);  // Qwen2Attention's q/k/v biases are not optional in 4.44
  // Qwen2's window, where transformers applies it at all (flash-attention, layers >= max_window_layers),
  // caps the context instead of changing the math: the CPU path of transformers has no window.
  const ModelConfig qwen2_window =
      load_with(R"(, "model_type": "qwen2", "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 1)");
  EXPECT_EQ(qwen2_window.sliding_window, 0);
  EXPECT_EQ(qwen2_window.max_positions, 32);
  EXPECT_NE(qwen2_window.positions_note.find("sliding_window"), std::string::npos);
  EXPECT_EQ(load_with(R"(, "model_type": "qwen2", "use_sliding_window": true, "sliding_window": 32, "max_window_layers": 2)")
                .max_positions,
            128);  // no layer is windowed
  EXPECT_EQ(load_with(R"(, "model_type": "qwen2", "use_sliding_window": false, "sliding_window": 32)").max_positions, 128);

  const ModelConfig phi3 = load_with(R"(, "model_type": "phi3", "sliding_window": 47)");
  EXPECT_EQ(phi3.layout, Layout::Fused);
  EXPECT_EQ(phi3.max_positions, 47);
  EXPECT_EQ(phi3.sliding_window, 0);

  const ModelConfig gemma = load_with(R"(, "model_type": "gemma", "head_dim": 24, "hidden_act": "silu")");
  EXPECT_EQ(gemma.head_dim, 24);
  EXPECT_EQ(gemma.activation, Activation::GeluTanh);  // hidden_act is ignored, as GemmaMLP does
  EXPECT_FLOAT_EQ(gemma.embed_scale, 8.f);
  EXPECT_EQ(gemma.norm_weight_offset, 1.f);
  EXPECT_TRUE(gemma.tied_embeddings);
  EXPECT_EQ(load_with(R"(, "model_type": "gemma", "hidden_activation": "gelu")").activation, Activation::GeluErf);

  const ModelConfig llama3 = load_with(
      R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  EXPECT_EQ(llama3.rope_scaling.type, RopeScaling::Type::Llama3);
  EXPECT_EQ(llama3.rope_scaling.factor, 8.f);
  EXPECT_EQ(llama3.rope_scaling.original_max_positions, 8192);
  const ModelConfig linear = load_with(R"(, "rope_scaling": {"type": "linear", "factor": 2.0})");
  EXPECT_EQ(linear.rope_scaling.type, RopeScaling::Type::Linear);
  EXPECT_EQ(load_with(R"(, "rope_scaling": null)").rope_scaling.type, RopeScaling::Type::None);
  EXPECT_EQ(load_with(R"(, "layer_types": ["full_attention", "full_attention"])").sliding_window, 0);
}

// Keys that change the math and are not implemented are refused by name, never ignored.
TEST(ModelConfig, UnhandledMathKeysAreRefusedByName) {
  const struct {
    const char* extra;
    const char* needle;
  } cases[] = {
      {R"(, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0})", "'dynamic'"},
      {R"(, "rope_scaling": {"rope_type": "yarn", "factor": 2.0})", "'yarn'"},
      {R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})", "llama3 needs low_freq_factor"},
      {R"(, "rope_scaling": {"rope_type": "linear"})", "needs a 'factor'"},
      {R"(, "rope_scaling": 2)", "'rope_scaling' is 2"},
      {R"(, "model_type": "phi3", "rope_scaling": {"type": "longrope", "short_factor": [1], "long_factor": [1]})",
       "'longrope'; not supported for phi3"},
      {R"(, "model_type": "phi3", "rope_scaling": {"type": "su"})", "'su'"},
      {R"(, "model_type": "mistral", "rope_scaling": {"type": "linear", "factor": 2.0})", "not supported for mistral"},
      {R"(, "mlp_bias": true)", "'mlp_bias'"},
      {R"(, "attn_logit_softcapping": 50.0)", "'attn_logit_softcapping'"},
      {R"(, "final_logit_softcapping": 30.0)", "'final_logit_softcapping'"},
      {R"(, "query_pre_attn_scalar": 256)", "'query_pre_attn_scalar'"},
      {R"(, "partial_rotary_factor": 0.5)", "'partial_rotary_factor' is 0.5"},
      {R"(, "layer_types": ["sliding_attention", "full_attention"])", "'layer_types'"},
      {R"(, "model_type": "mistral", "use_sliding_window": true)", "'use_sliding_window'"},
      {R"(, "model_type": "gemma2")", "unknown architecture"},
      {R"(, "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "scale_attn_weights": false)",
       "'scale_attn_weights'"},
      {R"(, "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "scale_attn_by_inverse_layer_idx": true)",
       "'scale_attn_by_inverse_layer_idx'"},
      {R"(, "model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, "tie_word_embeddings": false)",
       "'tie_word_embeddings'"},
  };
  for (const auto& c : cases) {
    const std::string msg = load_error(c.extra);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.extra << " -> " << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  }
  EXPECT_EQ(load_error(R"(, "partial_rotary_factor": 1.0)"), "");
}

// A checkpoint recovered for Sync-Point Drop records its split (python/spd_checkpoint.py); a
// malformed record is refused naming the key and what was expected.
TEST(ModelConfig, SpdCheckpointKey) {
  EXPECT_EQ(load_error(R"(, "lowsync_spd": {"tp": 2, "drop": [0, 1], "heads": [2, 2], "ffn": [80, 80]})"), "");
  const struct {
    const char* extra;
    const char* needle;
  } cases[] = {
      {R"(, "lowsync_spd": [2])", "'lowsync_spd' must be an object"},
      {R"(, "lowsync_spd": {"tp": 1, "drop": [0], "heads": [4], "ffn": [160]})", "'tp' is 1"},
      {R"(, "lowsync_spd": {"tp": 2, "drop": [2], "heads": [2, 2], "ffn": [80, 80]})", "ascending layers in [0, 1]"},
      {R"(, "lowsync_spd": {"tp": 2, "drop": [1, 0], "heads": [2, 2], "ffn": [80, 80]})", "ascending layers"},
      {R"(, "lowsync_spd": {"tp": 2, "heads": [2, 2], "ffn": [80, 80]})", "'drop' must be a list"},
      {R"(, "lowsync_spd": {"tp": 2, "drop": [0], "heads": [3, 2], "ffn": [80, 80]})", "summing to"},
      {R"(, "lowsync_spd": {"tp": 2, "drop": [0], "heads": [4], "ffn": [160]})", "tp entries"},
  };
  for (const auto& c : cases) {
    const std::string msg = load_error(c.extra);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.extra << " -> " << msg;
    EXPECT_NE(msg.find("lowsync_spd"), std::string::npos) << msg;
  }
}

// A decoupled model's coupled layers: parsed into segments, bad lists refused naming the key.
TEST(ModelConfig, DecoupledCoupledLayers) {
  const std::string bp = R"(, "num_hidden_layers": 5, "bp": {"sub_blocks": 2, "sync_every": 2, "heads": [2, 2],)"
                         R"( "kv_heads": [1, 1], "ffn": [80, 80])";
  const ModelConfig m = load_with(bp + R"(, "coupled": [1, 4]})");
  EXPECT_EQ(m.bp.coupled, (std::vector<int>{1, 4}));
  EXPECT_TRUE(m.bp.is_coupled(4));
  EXPECT_FALSE(m.bp.is_coupled(2));
  // [0] | coupled 1 | [2, 3] merged after 3 | coupled 4
  const auto segs = m.bp.segments(m.n_layers);
  ASSERT_EQ(segs.size(), 4u);
  EXPECT_TRUE(segs[0].first == 0 && segs[0].end == 1 && !segs[0].coupled);
  EXPECT_TRUE(segs[1].first == 1 && segs[1].end == 2 && segs[1].coupled);
  EXPECT_TRUE(segs[2].first == 2 && segs[2].end == 4 && !segs[2].coupled);
  EXPECT_TRUE(segs[3].first == 4 && segs[3].end == 5 && segs[3].coupled);
  EXPECT_EQ(load_with(bp + "}").bp.segments(5).size(), 3u);  // none coupled: [0, 1] [2, 3] [4]

  const struct {
    const char* coupled;
    const char* needle;
  } cases[] = {
      {R"(, "coupled": [5]})", "holds 5; expected a list of layer indices in [0, 5)"},
      {R"(, "coupled": [-1]})", "holds -1"},
      {R"(, "coupled": [3, 1]})", "holds 1; expected a list of layer indices in [0, 5), in increasing order"},
      {R"(, "coupled": [2, 2]})", "holds 2"},
      {R"(, "coupled": "1"})", "key 'coupled' is \"1\""},
      {R"(, "coupled": [1.5]})", "holds 1.5"},
  };
  for (const auto& c : cases) {
    const std::string msg = load_error(bp + c.coupled);
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.coupled << " -> " << msg;
    EXPECT_NE(msg.find("config.json (key 'bp')"), std::string::npos) << msg;
  }
  // A coupled layer's share is its rank's sub-blocks taken together: every sub-block needs the
  // model's 2 query heads per key/value head.
  const std::string msg = load_error(R"(, "bp": {"sub_blocks": 2, "sync_every": 1, "heads": [3, 1], "kv_heads": [1, 1],)"
                                     R"( "ffn": [80, 80], "coupled": [0]})");
  EXPECT_NE(msg.find("sub-block 0 has 3 heads for 1 key/value heads; coupled layers need 2"), std::string::npos) << msg;
}

// How the streams merge: absent = delta, "mean" read, anything else refused naming the file and key.
TEST(ModelConfig, DecoupledMerge) {
  const std::string bp = R"(, "bp": {"sub_blocks": 2, "sync_every": 1, "heads": [2, 2], "kv_heads": [1, 1],)"
                         R"( "ffn": [80, 80])";
  EXPECT_EQ(load_with(bp + "}").bp.merge, DecoupledSpec::Merge::Delta);
  EXPECT_EQ(load_with(bp + R"(, "merge": "delta"})").bp.merge, DecoupledSpec::Merge::Delta);
  EXPECT_EQ(load_with(bp + R"(, "merge": "mean"})").bp.merge, DecoupledSpec::Merge::Mean);
  for (const char* bad : {R"(, "merge": "Mean"})", R"(, "merge": 1})", R"(, "merge": ["mean"]})"}) {
    const std::string msg = load_error(bp + bad);
    EXPECT_NE(msg.find("config.json (key 'bp'): key 'merge' is "), std::string::npos) << bad << " -> " << msg;
    EXPECT_NE(msg.find(R"(expected "delta" or "mean")"), std::string::npos) << msg;
  }
}
