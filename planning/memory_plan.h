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
// `layers`: the rank's pipeline stage; the first stage holds the embeddings, the last the final
// norm and the LM head (the token embedding again when the head is tied to it). `head_rows`: the
// rows of the head the rank holds (a split head, Plan::head; -1: the whole vocabulary). A tied head
// on the first stage is a view of the whole token embedding, which the lookup needs anyway.
RankMemory rank_memory(const ModelConfig& model, const LayerShare& share, const PlanLimits& limits, const Span& layers,
                       bool first_stage, bool last_stage, int head_rows = -1);
// One stage holding every layer.
inline RankMemory rank_memory(const ModelConfig& model, const LayerShare& share, const PlanLimits& limits) {
  return rank_memory(model, share, limits, {0, model.n_layers}, true, true);
}

}  // namespace lowsync
