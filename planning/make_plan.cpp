#include "planning/make_plan.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>

#include "io/error.h"
#include "planning/memory_plan.h"
#include "planning/micro_batches.h"
#include "planning/shares.h"
#include "planning/spd_drop.h"

namespace lowsync {

PlanLimits limits_of(const JobConfig& job) {
  // weights.dtype: resolved by then (with_resolved_weights); an unresolved auto plans for fp32.
  const WeightsDType weights = job.weights_dtype == WeightsDType::Auto ? WeightsDType::F32 : job.weights_dtype;
  return {job.task, job.batch.max_tokens, job.batch.max_sequences, job.task == "generate" ? job.generate.max_new_tokens : 0,
          weights};
}

namespace {

void check_grid(const ModelConfig& model, ReplicaSplit split, int group, int dp, int pp, int world,
                const std::string& where) {
  const char* axis = split_name(split);
  if (group * dp * pp != world) {
    if (pp == 1)
      throw UserError(where + ": parallel." + axis + " x parallel.dp = " + std::to_string(group) + " x " +
                      std::to_string(dp) + " but mpirun started " + std::to_string(world) + " ranks; they must be equal");
    throw UserError(where + ": parallel." + axis + " x parallel.pp x parallel.dp = " + std::to_string(group) + " x " +
                    std::to_string(pp) + " x " + std::to_string(dp) + " but mpirun started " + std::to_string(world) +
                    " ranks; they must be equal");
  }
  if (pp > model.n_layers)
    throw UserError(where + ": parallel.pp = " + std::to_string(pp) + " exceeds the model's " +
                    std::to_string(model.n_layers) + " layers; every stage needs at least one");
  if (pp > 1 && model.bp.enabled())
    throw UserError(where + ": pipeline stages (parallel.pp) do not run decoupled models yet; use parallel.bp and dp");
  if (model.bp.enabled() && split == ReplicaSplit::Tensor && group > 1)
    throw UserError(where + ": " + model.dir + " is a decoupled model; run it with parallel.bp, not parallel.tp");
  if (!model.bp.enabled() && split == ReplicaSplit::Block)
    throw UserError(where + ": parallel.bp = " + std::to_string(group) + " needs a decoupled model, and " + model.dir +
                    " is not one (convert it with python/decoupled.py)");
}

}  // namespace

// Stages must cover the layers in order, each at least one layer.
void check_stages(const ModelConfig& model, const std::vector<Span>& stages, int pp, const std::string& where) {
  if (static_cast<int>(stages.size()) != pp)
    throw UserError(where + ": " + std::to_string(stages.size()) + " pipeline stages listed for parallel.pp = " +
                    std::to_string(pp));
  int next = 0;
  for (size_t i = 0; i < stages.size(); ++i) {
    if (stages[i].begin != next || stages[i].count < 1)
      throw UserError(where + ": stage " + std::to_string(i) + " holds layers [" + std::to_string(stages[i].begin) + ", " +
                      std::to_string(stages[i].end()) + "); stages must be consecutive, in order, at least one layer each");
    next = stages[i].end();
  }
  if (next != model.n_layers)
    throw UserError(where + ": the stages hold " + std::to_string(next) + " layers but the model has " +
                    std::to_string(model.n_layers));
}

namespace {

// memory.pool: peer. Every rank that streams layers gets one holder: the rank with the most memory
// to spare under its limit (one that holds all its own layers; the lowest rank among equals),
// which then also holds those layers. A holder may serve several ranks; a rank that streams is
// never a holder, so each side of a transfer runs on one thread of its process. When no rank has
// room, the plan is refused with every rank's spare memory.
void assign_pool_holders(Plan& p, const std::vector<int64_t>& layer_bytes, const std::string& where) {
  const MemoryBudget& budget = p.memory_budget;
  std::vector<int64_t> spare(p.world, 0);
  for (int w = 0; w < p.world; ++w)
    if (p.resident_layers[w] == p.layers_of(w).count)
      spare[w] = budget.of(w) > 0 ? std::max<int64_t>(0, budget.of(w) - p.memory[w].total()) : INT64_MAX;
  p.pool_holder.assign(p.world, -1);
  for (int w = 0; w < p.world; ++w) {
    const int streamed = p.layers_of(w).count - p.resident_layers[w];
    if (streamed == 0) continue;
    const int64_t need = streamed * layer_bytes[w];
    int best = -1;
    for (int h = 0; h < p.world; ++h)
      if (h != w && spare[h] >= need && (best < 0 || spare[h] > spare[best])) best = h;
    if (best < 0) {
      std::string room;
      for (int h = 0; h < p.world; ++h)
        room += (h ? ", " : "") + std::string("rank ") + std::to_string(h) + " " +
                (spare[h] == INT64_MAX ? std::string("no limit") : std::to_string(spare[h] >> 20) + " MiB");
      throw UserError(where + ": memory.pool: peer: rank " + std::to_string(w) + " streams " + std::to_string(streamed) +
                      " layers (" + std::to_string(need >> 20) + " MiB) beyond its memory.limit of " +
                      std::to_string(budget.of(w) >> 20) + " MiB, and no other rank has that much to spare (" + room +
                      "); raise a limit, add ranks, or set memory.pool: host");
    }
    p.pool_holder[w] = best;
    spare[best] -= need;
    p.memory[best].pooled += need;
  }
}

}  // namespace

// Each rank's memory, and under memory.limit how many of its stage's layers it holds: the others
// stay in the memory-mapped checkpoint (the host's page cache) and are streamed in one layer ahead
// of use, through two layer buffers (the one in use and the one being read). With memory.pool:
// peer, a rank with room to spare holds them instead (assign_pool_holders).
void fill_memory(Plan& p, const ModelConfig& model, const std::string& where) {
  p.memory.clear();
  p.resident_layers.clear();
  p.pool_holder.clear();
  const MemoryBudget& budget = p.memory_budget;
  if (!budget.rank_limits.empty() && static_cast<int>(budget.rank_limits.size()) != p.world)
    throw UserError(where + ": memory.limit lists " + std::to_string(budget.rank_limits.size()) +
                    " limits but mpirun started " + std::to_string(p.world) + " ranks; give one per rank, or one for all");
  std::vector<int64_t> layer_bytes(p.world, 0);  // one layer's share on each rank
  for (int w = 0; w < p.world; ++w) {
    const int st = p.stage_of(w), r = p.group_rank_of(w);
    const Span& layers = p.stages[st];
    const bool first = st == 0, last = st == p.pp - 1;
    const int head_rows = p.head.empty() ? model.vocab : p.head[r].count;
    RankMemory m = rank_memory(model, p.shares[r], p.limits, layers, first, last, head_rows);
    const RankMemory none = rank_memory(model, p.shares[r], p.limits, {layers.begin, 0}, first, last, head_rows);
    const int64_t layer = (m.weights - none.weights) / layers.count;  // one layer's weights
    layer_bytes[w] = layer;
    int resident = layers.count;
    const int64_t limit = budget.of(w);
    if (limit > 0 && m.total() > limit) {
      const int64_t fixed = m.total() - layers.count * layer;  // all but the layers' weights
      if (model.bp.enabled())
        throw UserError(where + ": memory.limit: stage " + std::to_string(st) + " rank " + std::to_string(r) +
                        " needs " + std::to_string(m.total() >> 20) + " MiB; streaming layers needs an ordinary model");
      if (fixed + 2 * layer > limit)
        throw UserError(where + ": memory.limit of " + std::to_string(limit >> 20) + " MiB is below what " +
                        (budget.rank_limits.empty() ? "stage " + std::to_string(st) + " rank " + std::to_string(r)
                                                    : "rank " + std::to_string(w)) +
                        " needs with every layer streamed (" + std::to_string((fixed + 2 * layer) >> 20) +
                        " MiB: embeddings, head, KV cache, activations, two layer buffers); raise it, lower the batch "
                        "limits, or add ranks");
      resident = static_cast<int>(std::min<int64_t>(layers.count, (limit - fixed - 2 * layer) / layer));
      m.weights -= (layers.count - resident) * layer - 2 * layer;
    }
    p.memory.push_back(m);
    p.resident_layers.push_back(resident);
  }
  if (budget.pool == MemoryPool::Peer) assign_pool_holders(p, layer_bytes, where);
}

void check_plan(const Plan& plan, const ModelConfig& model, int world, const std::string& where) {
  check_grid(model, plan.split, plan.group, plan.dp, plan.pp, world, where);
  check_stages(model, plan.stages, plan.pp, where);
  if (plan.micro_batches < 1) throw UserError(where + ": micro_batches must be >= 1");
  check_shares(model, plan.split == ReplicaSplit::Block, plan.shares, where);
  check_head_shares(model, plan.group, plan.head, where);
  if (static_cast<int>(plan.spd_drop.size()) != model.n_layers)
    throw UserError(where + ": the SPD drop set names layers beyond the model's " + std::to_string(model.n_layers));
  for (bool d : plan.spd_drop) {
    if (!d) continue;
    if (!model.is_decoder())
      throw UserError(where + ": Sync-Point Drop needs a pre-LN decoder (llama, gpt2); " + model.architecture +
                      " is a post-LN encoder, whose LayerNorm after attention needs the full sum");
    if (model.bp.enabled())
      throw UserError(where + ": Sync-Point Drop applies to tensor parallelism; this decoupled model already syncs "
                      "once every " + std::to_string(model.bp.sync_every) + " layers");
  }
}

Plan make_plan(const ModelConfig& model, const PlanLimits& limits, int world, ReplicaSplit split, int group, int dp,
               const std::vector<double>& speeds, std::vector<bool> spd_drop, const std::string& where,
               const PipelineChoice& pipeline, const MemoryBudget& memory, bool split_head) {
  if (model.bp.enabled() && group == 1) split = ReplicaSplit::Block;  // bp = 1 computes every sub-block in turn
  const int pp = pipeline.pp;
  check_grid(model, split, group, dp, pp, world, where);
  const std::vector<double> speed = speeds.empty() ? std::vector<double>(group, 1.0) : speeds;
  if (static_cast<int>(speed.size()) != group)
    throw UserError(where + ": parallel.speeds lists " + std::to_string(speed.size()) + " ranks; a replica has " +
                    std::to_string(group));
  Plan p;
  p.model = model.dir;
  p.model_digest = config_digest(model);
  p.world = world;
  p.limits = limits;
  p.split = split;
  p.group = group;
  p.dp = dp;
  p.pp = pp;
  p.shares = split == ReplicaSplit::Block ? block_shares(model, speed) : tensor_shares(model, speed);
  if (split_head && group > 1 && model.is_decoder()) p.head = head_shares(model, speed);
  // Stages: as stated, or the layers split as evenly as they go (the spare ones to the first
  // stages: the last also computes the LM head).
  std::vector<int> counts = pipeline.stage_layers;
  if (counts.empty())
    for (int st = 0; st < pp; ++st) counts.push_back(model.n_layers / pp + (st < model.n_layers % pp ? 1 : 0));
  if (static_cast<int>(counts.size()) != pp)
    throw UserError(where + ": parallel.stages lists " + std::to_string(counts.size()) + " stages for parallel.pp = " +
                    std::to_string(pp));
  for (int st = 0, first = 0; st < pp; first += counts[st], ++st) p.stages.push_back({first, counts[st]});
  // `auto` (0): one per stage here; with a profile the planner or load_job picks from the cost model
  // (planning/micro_batches.h).
  p.micro_batches = pipeline.micro_batches > 0 ? pipeline.micro_batches : (pp > 1 ? micro_batches_without_profile(pp) : 1);
  spd_drop.resize(model.n_layers, false);
  p.spd_drop = std::move(spd_drop);
  check_plan(p, model, world, where);
  p.memory_budget = memory;
  fill_memory(p, model, where);
  return p;
}

void complete_parsed_plan(Plan& p, const ModelConfig& model, int world, const std::string& where) {
  for (size_t l = model.n_layers; l < p.spd_drop.size(); ++l)
    if (p.spd_drop[l])
      throw UserError(where + ": spd_drop names layer " + std::to_string(l) + " of a " + std::to_string(model.n_layers) +
                      "-layer model");
  p.spd_drop.resize(model.n_layers, false);
  if (p.stages.empty() && p.pp == 1) p.stages.push_back({0, model.n_layers});
  check_plan(p, model, world, where);
  fill_memory(p, model, where);
}

bool split_head_gathers_rows(const JobConfig& job) {
  const GenerateOptions& g = job.generate;
  return job.task == "generate" && (g.temperature > 0.f || g.repetition_penalty != 1.f || g.presence_penalty != 0.f ||
                                    g.frequency_penalty != 0.f || g.logprobs > 0);
}

bool wants_split_head(const JobConfig& job) {
  if (job.parallel.split_head == SplitHead::Auto) return job.backend == "cpu" && !split_head_gathers_rows(job);
  return job.parallel.split_head == SplitHead::On;
}

Plan plan_from_job(const JobConfig& job, const ModelConfig& model, int world, const MemoryBudget& memory) {
  if (!job.parallel.plan.empty()) {
    const std::string& file = job.parallel.plan;
    Plan p = Plan::load(file);
    const std::string why = file + ": this plan was made for ";
    namespace fs = std::filesystem;
    const bool same_model = p.model_digest.empty()
                                ? fs::weakly_canonical(p.model) == fs::weakly_canonical(job.model)
                                : p.model_digest == config_digest(model);
    if (!same_model)
      throw UserError(why + "the model " + p.model + " (config digest " + p.model_digest + "), not " + job.model +
                      "; make a new one with lowsync plan");
    if (p.world != world)
      throw UserError(why + std::to_string(p.world) + " ranks but mpirun started " + std::to_string(world));
    const PlanLimits want = limits_of(job);
    if (!(p.limits == want))
      throw UserError(why + "task " + p.limits.task + " with batch.max_tokens " + std::to_string(p.limits.max_tokens) +
                      ", batch.max_sequences " + std::to_string(p.limits.max_sequences) +
                      ", generate.max_new_tokens " + std::to_string(p.limits.max_new_tokens) + ", weights.dtype " +
                      weights_dtype_name(p.limits.weights) + "; the job has " + want.task + " with " +
                      std::to_string(want.max_tokens) + ", " + std::to_string(want.max_sequences) + ", " +
                      std::to_string(want.max_new_tokens) + ", " + weights_dtype_name(want.weights));
    if (job.parallel.sync_dtype != SyncDType::F32 && job.parallel.sync_dtype != p.sync_dtype)
      throw UserError(job.path + ": parallel.sync_dtype is " + sync_dtype_name(job.parallel.sync_dtype) + " but the plan " +
                      file + " says sync_dtype " + sync_dtype_name(p.sync_dtype) + "; give one");
    complete_parsed_plan(p, model, world, file);
    return p;
  }
  ReplicaSplit split = job.parallel.bp > 1 ? ReplicaSplit::Block : ReplicaSplit::Tensor;
  if (model.bp.enabled() && job.parallel.tp == 1) split = ReplicaSplit::Block;
  const int group = job.parallel.group();
  int dp = job.parallel.dp;
  if (dp == 0) {  // `parallel.dp: auto`: as many replicas as the world holds
    const int replica = group * job.parallel.pp;
    if (world % replica != 0)
      throw UserError(job.path + ": parallel.dp: auto needs a rank count that is a multiple of " +
                      (job.parallel.pp > 1 ? "parallel." + std::string(split_name(split)) + " x parallel.pp = "
                                           : "parallel." + std::string(split_name(split)) + " = ") +
                      std::to_string(replica) + ", but mpirun started " + std::to_string(world) + " ranks");
    dp = world / replica;
  }
  check_grid(model, split, group, dp, job.parallel.pp, world, job.path);
  Plan p = make_plan(model, limits_of(job), world, split, group, dp, job.parallel.speeds,
                     resolve_spd_drop(job, model, group), job.path,
                     {job.parallel.pp, job.parallel.stages, job.parallel.micro_batches}, memory,
                     wants_split_head(job));
  p.sync_dtype = job.parallel.sync_dtype;
  p.chosen_by = "the job's parallel keys";
  return p;
}

}  // namespace lowsync
