#include "jobs/load_job.h"

#include <chrono>
#include <filesystem>

#include "io/error.h"
#include "io/log.h"
#include "jobs/make_backend.h"
#include "planning/decoupled_candidates.h"
#include "planning/make_plan.h"
#include "planning/micro_batches.h"
#include "planning/planner.h"
#include "planning/profiler.h"
#include "planning/spd_checkpoint.h"

namespace lowsync {

MemoryBudget memory_budget(const JobConfig& job, Communicator& world) {
  MemoryBudget budget;
  budget.pool = job.memory_pool;
  if (job.memory_limits.empty()) {
    budget.limit = job.memory_limit.bytes;
    if (job.memory_limit.fraction <= 0) return budget;
    int64_t least = -usable_memory_bytes(world);
    world.all_reduce_max(&least, 1);
    budget.limit = static_cast<int64_t>(job.memory_limit.fraction * double(-least));
    return budget;
  }
  const int64_t mine = usable_memory_bytes(world);
  std::vector<int64_t> usable(world.size());
  world.all_gather_bytes(&mine, sizeof mine, usable.data());
  for (size_t w = 0; w < job.memory_limits.size(); ++w) {  // a count unlike the world's: the plan refuses it
    const MemoryLimit& m = job.memory_limits[w];
    const double host = w < usable.size() ? double(usable[w]) : 0.0;
    budget.rank_limits.push_back(m.fraction > 0 ? static_cast<int64_t>(m.fraction * host) : m.bytes);
  }
  return budget;
}

namespace {

// parallel.micro_batches: auto on a pipeline the job's parallel keys state (the planner chooses
// for its own candidates): rank 0 predicts every count with the cost model on plan.profile when
// that was made for this world and model, and sends its choice to every rank; without such a
// profile (measuring one takes seconds a job need not pay) the plan's one per stage stays.
void choose_job_micro_batches(const JobConfig& job, const ModelConfig& model, Plan& plan, Communicator& world) {
  if (job.parallel.auto_plan || !job.parallel.plan.empty() || plan.pp < 2 || job.parallel.micro_batches != 0) return;
  int64_t count = plan.micro_batches;
  world.agree([&] {
    if (world.rank() != 0) return;
    const std::string& file = job.plan.profile;
    if (std::filesystem::exists(file)) {
      const Profile profile = Profile::load(file);
      if (profile.world == world.size() && profile.model == model.dir &&
          static_cast<int>(profile.ranks.size()) == profile.world) {
        const MicroBatchChoice choice = choose_micro_batches(plan, model, profile, workload_of(job, model));
        count = choice.chosen;
        log::info("lowsync: parallel.micro_batches auto: %s, predicted on %s", describe(choice).c_str(), file.c_str());
        return;
      }
    }
    log::info("lowsync: parallel.micro_batches auto: %lld, one per stage (no profile of this world and model at %s "
              "to predict from; lowsync profile makes one)", static_cast<long long>(count), file.c_str());
  });
  world.broadcast(&count, sizeof count, 0);
  plan.micro_batches = static_cast<int>(count);
}

}  // namespace

LoadedJob load_job(const JobConfig& job_as_given, Communicator& world,
                   const std::function<void(const ModelConfig&, const Plan&)>& check) {
  JobConfig job = with_resolved_threads(job_as_given, world);  // `threads: auto` (collective)
  LoadedJob j;
  j.threads = job.threads;
  world.agree([&] { j.model = load_model_config(job.model); });
  world.agree([&] {
    job = with_resolved_weights(job);  // `weights.dtype: auto`: the checkpoint's
    if (job.weights_bf16_dot && job.weights_dtype != WeightsDType::BF16)
      throw UserError(job.path + ": weights.bf16_dot needs bf16 weights; " + job.model + " is stored as " +
                      weights_dtype_name(job.weights_dtype) + " (set weights.dtype: bf16 to round it at load)");
  });
  j.weights_dtype = job.weights_dtype;
  world.agree([&] { j.backend = make_backend(job, world); });
  const int64_t usable = usable_memory_bytes(world);
  const MemoryBudget limit = memory_budget(job, world);
  world.agree([&] {
    if (limit.set() && job.backend != "cpu")
      throw UserError(job.path + ": memory.limit streams layers from the memory-mapped checkpoint, which the " +
                      job.backend + " backend does not do yet; use backend: cpu");
  });
  // A plan file the planner made may name a decoupled checkpoint of parallel.decoupled.from: load that model.
  if (!job.parallel.plan.empty())
    world.agree([&] { j.model = model_of_plan(Plan::load(job.parallel.plan), job, j.model); });
  if (job.parallel.auto_plan) {
    j.plan = choose_plan(job, j.model, world, *j.backend, limit);  // collective; agreed inside
    // The planner may have chosen a decoupled checkpoint of parallel.decoupled.from: load that model.
    world.agree([&] { j.model = model_of_plan(j.plan, job, j.model); });
  } else {
    world.agree([&] { j.plan = plan_from_job(job, j.model, world.size(), limit); });
    choose_job_micro_batches(job, j.model, j.plan, world);  // collective
  }
  world.agree([&] { check_spd_checkpoint(j.model, j.plan, job.path); });
  world.agree([&] { check(j.model, j.plan); });
  world.agree([&] {
    if (j.plan.head_split() && job.backend != "cpu")
      throw UserError(job.path + ": parallel.split_head (a plan with 'head' rows) runs on backend cpu only yet, not " +
                      job.backend + "; set parallel.split_head: false");
  });
  // Refuse before any weight is read when the plan's memory exceeds what a rank has (a batch limit
  // of millions of tokens would otherwise end in std::bad_alloc mid-run, or in swapping).
  world.agree([&] {
    const int64_t need = j.plan.memory_of(world.rank()).total();
    if (usable > 0 && need > usable)
      throw UserError(job.path + ": rank " + std::to_string(world.rank()) + " needs " + std::to_string(need >> 20) +
                      " MiB under this plan (weights, KV cache for batch.max_tokens / batch.max_sequences, activations)" +
                      " but has " + std::to_string(usable >> 20) + " MiB usable; lower the batch limits, add ranks, or " +
                      "set memory.limit to stream layers");
  });
  j.groups = std::make_unique<ParallelGroups>(
      ParallelGroups::make(j.plan.group, j.plan.pp, j.plan.dp, split_name(j.plan.split)));
  j.groups->tp.set_sync_wait(resolve_sync_wait(job, world));  // `parallel.sync_wait: auto` (collective)

  const auto t0 = std::chrono::steady_clock::now();
  world.agree([&] {
    j.transformer = std::make_unique<Transformer>(j.model, *j.backend, TensorParallelGroup(&j.groups->tp, j.backend.get(), j.plan.sync_dtype),
                                                  j.plan.share_of(world.rank()), j.plan.layers_of(world.rank()),
                                                  j.plan.spd_drop, j.plan.resident_of(world.rank()), j.plan.head);
  });
  // memory.pool: peer: a rank that streams asks its holder for each layer; a holder reads its
  // peers' streamed layers now and serves them from a thread of its own.
  if (!j.plan.pool_holder.empty()) {
    world.agree([&] { PoolLink::require_thread_multiple(); });
    j.pool_link = std::make_unique<PoolLink>(world);
    const int holder = j.plan.holder_of(world.rank());
    if (holder >= 0) j.transformer->stream_from(std::make_unique<PeerLayers>(*j.pool_link, holder));
    std::vector<PeerPoolServer::Peer> peers;
    for (int w = 0; w < world.size(); ++w) {
      if (j.plan.holder_of(w) != world.rank()) continue;
      const Span& stage = j.plan.layers_of(w);
      const int held = j.plan.resident_of(w);
      peers.push_back({w, j.plan.share_of(w), {stage.begin + held, stage.count - held}});
    }
    world.agree([&] {
      if (!peers.empty()) j.pool_server = std::make_unique<PeerPoolServer>(j.model, *j.backend, *j.pool_link, peers);
    });
  }
  j.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return j;
}

}  // namespace lowsync
