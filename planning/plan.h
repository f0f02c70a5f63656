#pragma once
// How one job runs on the world's ranks, as one value (plan.yaml): the grid of replicas and the
// ranks inside each, the part of every layer each rank computes, which syncs each layer pays, and
// the memory each rank needs. `run`, `calibrate` and `plan` all build it the same way
// (planning/make_plan.h); layers receive their LayerShare from it and never compute one.
//
// Grid: world = dp x pp x group. World rank w is replica w / (pp x group), pipeline stage
// (w / group) % pp and rank w % group inside its stage. A stage holds consecutive layers (the first
// also embeds, the last also computes the final norm and the LM head); its ranks share those
// layers either as tensor-parallel shares of an ordinary model or as whole sub-blocks of a
// decoupled model.
#include <cstdint>
#include <string>
#include <vector>

#include "io/memory_pool.h"
#include "io/model_config.h"
#include "io/weights_dtype.h"
#include "layers/layer_share.h"
#include "mpi_comm/sync_codec.h"

namespace lowsync {

enum class ReplicaSplit { Tensor, Block };
const char* split_name(ReplicaSplit s);  // "tp" | "bp"

// Bytes one rank needs: weight matrices in the job's weights dtype, everything else fp32.
struct RankMemory {
  int64_t weights = 0;      // its share of every layer + the replicated embeddings, norms and head
  int64_t kv_cache = 0;     // keys and values of the largest batch the job's limits allow
  int64_t activations = 0;  // the largest pass's intermediate tensors and logits
  int64_t pooled = 0;       // peers' layers it holds for them (memory.pool: peer)
  int64_t total() const { return weights + kv_cache + activations + pooled; }
};

// memory.limit and memory.pool, resolved to bytes for a world: what each rank may use, and where
// the layers beyond it wait.
struct MemoryBudget {
  int64_t limit = 0;                 // every rank's (memory.limit as one value); 0: none
  std::vector<int64_t> rank_limits;  // [world rank] (memory.limit as a list); empty: `limit` for all
  MemoryPool pool = MemoryPool::Host;
  MemoryBudget(int64_t every_rank = 0) : limit(every_rank) {}  // NOLINT: a plain limit converts
  bool set() const { return limit > 0 || !rank_limits.empty(); }
  int64_t of(int world_rank) const { return rank_limits.empty() ? limit : rank_limits[world_rank]; }
};

// The job's limits a plan's memory was computed for; a saved plan runs only under the same ones.
struct PlanLimits {
  std::string task;  // generate | score | embed
  int max_tokens = 0, max_sequences = 0, max_new_tokens = 0;
  WeightsDType weights = WeightsDType::F32;  // how weight matrices are stored (resolved, never auto)
  bool operator==(const PlanLimits&) const = default;
};

struct Plan {
  // What it was made for.
  std::string model;         // model directory
  std::string model_digest;  // of config.json (a plan is tied to the model's shapes)
  int world = 1;
  PlanLimits limits;

  // The grid.
  ReplicaSplit split = ReplicaSplit::Tensor;
  int dp = 1, pp = 1, group = 1;

  std::vector<LayerShare> shares;  // [group rank], the same in every stage and replica
  std::vector<Span> stages;        // [stage]: its layers, consecutive, covering the model
  int micro_batches = 1;           // a batch's sequences split this many ways to keep stages busy
  std::vector<bool> spd_drop;      // [layer]: attention sync dropped (tensor split only)
  SyncDType sync_dtype = SyncDType::F32;  // how a sync's partial sums travel (parallel.sync_dtype)
  // The output head split over the last stage's ranks (parallel.split_head): [group rank] the rows
  // of the vocabulary it holds and computes; empty: every rank computes the whole head. A split
  // head costs one small collective per sampling or scoring pass (layers/logit_summary.h).
  std::vector<Span> head;
  std::vector<RankMemory> memory;  // [world rank]
  MemoryBudget memory_budget;      // bytes each rank may use (memory.limit) and memory.pool
  std::vector<int> resident_layers;  // [world rank]: layers of its stage held; the others are streamed
  // memory.pool: peer: [world rank] the rank whose memory holds its streamed layers (and sends each
  // when asked), -1 when it streams none. Empty: streamed layers come from the host's page cache.
  std::vector<int> pool_holder;
  std::string chosen_by;           // who decided: the job's parallel keys, a plan file, or the planner

  int replica_of(int world_rank) const { return world_rank / (group * pp); }
  int stage_of(int world_rank) const { return (world_rank / group) % pp; }
  int group_rank_of(int world_rank) const { return world_rank % group; }
  const LayerShare& share_of(int world_rank) const { return shares[group_rank_of(world_rank)]; }
  const Span& layers_of(int world_rank) const { return stages[stage_of(world_rank)]; }
  int resident_of(int world_rank) const {
    return resident_layers.empty() ? layers_of(world_rank).count : resident_layers[world_rank];
  }
  // The rank holding world_rank's streamed layers in its memory; -1: none (the page cache, or all held).
  int holder_of(int world_rank) const { return pool_holder.empty() ? -1 : pool_holder[world_rank]; }
  const RankMemory& memory_of(int world_rank) const { return memory[world_rank]; }
  int layers() const { return static_cast<int>(spd_drop.size()); }
  bool head_split() const { return !head.empty(); }
  // The vocabulary rows of the head a rank computes (the whole vocabulary when not split).
  Span head_of(int world_rank, int vocab) const { return head.empty() ? Span{0, vocab} : head[group_rank_of(world_rank)]; }
  // The all-reduces layer l pays inside its stage: 2 (TP, or a decoupled model's coupled layer), 1 (SPD,
  // or the last layer of a decoupled segment), 0.
  int syncs_in_layer(int l, const ModelConfig& model) const;
  int syncs_per_pass(const ModelConfig& model) const;  // summed over the stages
  int syncs_in_stage(int stage, const ModelConfig& model) const;
  int dropped_layers() const;
  // One line for logs and reports, e.g. "tp=2 dp=1: heads 6+3, kv heads 2+1, ffn 896+640; SPD drops 0/30"
  // (with a split head: "...; head rows 24576+24576")
  // (with a pipeline: "pp=2 (layers 15+15, 4 micro-batches) tp=2 dp=1: ...").
  std::string describe() const;

  std::string to_yaml(const ModelConfig& model) const;
  void save(const std::string& path, const ModelConfig& model) const;
  // Reads a saved plan; UserError naming the file and key. It is checked against the job by
  // check_saved_plan (planning/make_plan.h), not here.
  static Plan load(const std::string& path);
  static Plan parse(const std::string& yaml, const std::string& where);  // `where` names the source in errors
};

// A digest of config.json's text (FNV-1a, hex), to tie a plan to the model it was made for.
std::string config_digest(const ModelConfig& model);

}  // namespace lowsync
