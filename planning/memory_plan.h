#pragma once
// The memory one rank needs under a plan, computed from the model's shapes and the job's limits
// before any weight is loaded (so that a job that fits nowhere is refused up front).
#include "io/model_config.h"
#include "layers/layer_share.h"
#include "planning/plan.h"

namespace lowsync {

// fp32 bytes: the rank's share of every layer (with norms and biases) plus the replicated
// embeddings, final norm and LM head; the KV cache of the largest batch the limits allow
// (generate: max_tokens of prompts + max_sequences x max_new_tokens, capped by the model's
// positions; score and embed: max_tokens); the activations of a max_tokens pass and its logits.
RankMemory rank_memory(const ModelConfig& model, const LayerShare& share, const PlanLimits& limits);

}  // namespace lowsync
