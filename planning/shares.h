#pragma once
// How a replica's layers are divided among its ranks: tensor-parallel shares of heads, key/value
// heads and FFN columns, or whole sub-blocks of a decoupled model, in proportion to each rank's
// speed (all equal: even shares). Every share a plan states, built here or read from a file, is
// checked by check_shares.
#include <string>
#include <vector>

#include "io/model_config.h"
#include "layers/layer_share.h"

namespace lowsync {

// FFN columns are divided in multiples of this many (when the width allows): one AVX-512 vector of
// fp32, so that every rank's products keep whole vectors and uneven splits cost no tail loops.
constexpr int kFfnGrain = 16;

// Tensor-parallel shares for ranks of relative speeds `speed` (one per rank):
//  - heads: whole key/value groups when there are at least as many kv heads as ranks (no kv head
//    is stored twice); otherwise query heads are split and a kv head whose group is split is
//    replicated on each rank that reads it (as vLLM does when tp exceeds the kv heads);
//  - FFN columns: so that each rank's parameters (attention + FFN, which set both its decode bytes
//    and its prefill FLOPs) are in proportion to its speed, compensating uneven head counts.
// UserError (naming the model and the cause) when the ranks cannot each get a head.
std::vector<LayerShare> tensor_shares(const ModelConfig& model, const std::vector<double>& speed);

// Sub-blocks of a decoupled model for ranks of relative speeds `speed`: contiguous, at least one
// each, in proportion to speed. UserError when there are more ranks than sub-blocks.
std::vector<LayerShare> block_shares(const ModelConfig& model, const std::vector<double>& speed);

// The output head's vocabulary rows for ranks of relative speeds `speed` (parallel.split_head):
// contiguous, in proportion to speed, in multiples of kFfnGrain rows (when the vocabulary has at
// least that many per rank; the last rank takes the ragged end). UserError when the vocabulary has
// fewer rows than ranks.
std::vector<Span> head_shares(const ModelConfig& model, const std::vector<double>& speed);

// Checks that head rows partition the vocabulary in order, one range per rank of a replica, each
// at least one row, and that the model has an output head. UserError "<where>: ..." naming the cause.
void check_head_shares(const ModelConfig& model, int group, const std::vector<Span>& head, const std::string& where);

// Checks that shares cover the model exactly: query heads and FFN columns partitioned in order
// (every rank at least one head and one column), each rank's kv heads exactly those its query
// heads read, sub-blocks partitioned in order. UserError "<where>: rank R: ..." naming the cause.
void check_shares(const ModelConfig& model, bool decoupled, const std::vector<LayerShare>& shares,
                  const std::string& where);

// Parameters of one layer that a share holds (weights only, no norms or biases): what sets a
// rank's decode bytes and prefill FLOPs per layer.
int64_t share_layer_parameters(const ModelConfig& model, const LayerShare& share);

}  // namespace lowsync
