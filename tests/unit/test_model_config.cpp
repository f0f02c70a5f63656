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
