#include "jobs/load_job.h"

#include <chrono>

#include "io/error.h"
#include "jobs/make_backend.h"
#include "planning/make_plan.h"
#include "planning/planner.h"
#include "planning/profiler.h"
#include "planning/spd_checkpoint.h"

namespace lowsync {

int64_t memory_limit_bytes(const JobConfig& job, Communicator& world) {
  if (job.memory_limit.fraction <= 0) return job.memory_limit.bytes;
  int64_t least = -usable_memory_bytes(world);
  world.all_reduce_max(&least, 1);
  return static_cast<int64_t>(job.memory_limit.fraction * double(-least));
}

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
  const int64_t limit = memory_limit_bytes(job, world);
  world.agree([&] {
    if (limit > 0 && job.backend != "cpu")
      throw UserError(job.path + ": memory.limit streams layers from the memory-mapped checkpoint, which the " +
                      job.backend + " backend does not do yet; use backend: cpu");
  });
  if (job.parallel.auto_plan) {
    j.plan = choose_plan(job, j.model, world, *j.backend, limit);  // collective; agreed inside
  } else {
    world.agree([&] { j.plan = plan_from_job(job, j.model, world.size(), limit); });
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

  const auto t0 = std::chrono::steady_clock::now();
  world.agree([&] {
    j.transformer = std::make_unique<Transformer>(j.model, *j.backend, TensorParallelGroup(&j.groups->tp, j.backend.get(), j.plan.sync_dtype),
                                                  j.plan.share_of(world.rank()), j.plan.layers_of(world.rank()),
                                                  j.plan.spd_drop, j.plan.resident_of(world.rank()), j.plan.head);
  });
  j.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return j;
}

}  // namespace lowsync
