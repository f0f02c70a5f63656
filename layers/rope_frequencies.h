#pragma once
// The inverse frequencies of rotary position embeddings: pair i of a head at position p turns by
// p * inv_freq[i]. Unscaled, inv_freq[i] = theta^(-2i / head_dim); rope_scaling changes them once,
// at load, as transformers 4.44 does (modeling_rope_utils.py).
#include <vector>

#include "io/model_config.h"

namespace lowsync {

std::vector<float> rope_inv_freq(const ModelConfig& cfg);  // head_dim / 2 values

}  // namespace lowsync
