#pragma once
// SmolLM2-135M's shapes (no weights), for planner tests: 9 query heads in 3 kv groups of 64,
// hidden 576, FFN 1536, 30 layers, a tied head over 49152 tokens.
#include "io/model_config.h"

namespace lowsync {

inline ModelConfig smollm2() {
  ModelConfig m;
  m.dir = "smollm2";
  m.architecture = "LlamaForCausalLM";
  m.family = Family::Llama;
  m.hidden = 576, m.n_layers = 30, m.n_heads = 9, m.n_kv_heads = 3, m.head_dim = 64, m.intermediate = 1536;
  m.vocab = 49152, m.max_positions = 8192, m.tied_embeddings = true;
  m.json_text = "{smollm2}";
  return m;
}

}  // namespace lowsync
