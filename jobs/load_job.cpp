#include "jobs/load_job.h"

#include <chrono>

#include "io/error.h"
#include "jobs/make_backend.h"
#include "planning/make_plan.h"
#include "planning/planner.h"
#include "planning/profiler.h"

namespace lowsync {

LoadedJob load_job(const JobConfig& job_as_given, Communicator& world,
                   const std::function<void(const ModelConfig&, const Plan&)>& check) {
  const JobConfig job = with_resolved_threads(job_as_given, world);  // `threads: auto` (collective)
  LoadedJob j;
  j.threads = job.threads;
  world.agree([&] { j.model = load_model_config(job.model); });
  world.agree([&] { j.backend = make_backend(job, world); });
  // memory.limit as bytes: a share of the free memory is the smallest rank's share.
  int64_t limit = job.memory_limit.bytes;
  if (job.memory_limit.fraction > 0) {
    int64_t free_bytes = -usable_memory_bytes(world);
    world.all_reduce_max(&free_bytes, 1);
    limit = static_cast<int64_t>(job.memory_limit.fraction * double(-free_bytes));
  }
  world.agree([&] {
    if (limit > 0 && job.backend != "cpu")
      throw UserError(job.path + ": memory.limit streams layers from the memory-mapped checkpoint, which the " +
                      job.backend + " backend does not do yet; use backend: cpu");
  });
  if (job.parallel.auto_plan) {
    j.plan = choose_plan(job, j.model, world, *j.backend);  // collective; agreed inside
  } else {
    world.agree([&] { j.plan = plan_from_job(job, j.model, world.size(), limit); });
  }
  world.agree([&] { check(j.model, j.plan); });
  j.groups = std::make_unique<ParallelGroups>(ParallelGroups::make(j.plan.group, j.plan.pp, j.plan.dp));

  const auto t0 = std::chrono::steady_clock::now();
  world.agree([&] {
    j.transformer = std::make_unique<Transformer>(j.model, *j.backend, TensorParallelGroup(&j.groups->tp, j.backend.get()),
                                                  j.plan.share_of(world.rank()), j.plan.layers_of(world.rank()),
                                                  j.plan.spd_drop, j.plan.resident_of(world.rank()));
  });
  j.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return j;
}

}  // namespace lowsync
