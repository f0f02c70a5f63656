#include "jobs/load_job.h"

#include <chrono>

#include "jobs/make_backend.h"
#include "planning/make_plan.h"
#include "planning/planner.h"

namespace lowsync {

LoadedJob load_job(const JobConfig& job_as_given, Communicator& world,
                   const std::function<void(const ModelConfig&, const Plan&)>& check) {
  const JobConfig job = with_resolved_threads(job_as_given, world);  // `threads: auto` (collective)
  LoadedJob j;
  j.threads = job.threads;
  world.agree([&] { j.model = load_model_config(job.model); });
  world.agree([&] { j.backend = make_backend(job, world); });
  if (job.parallel.auto_plan) {
    j.plan = choose_plan(job, j.model, world, *j.backend);  // collective; agreed inside
  } else {
    world.agree([&] { j.plan = plan_from_job(job, j.model, world.size()); });
  }
  world.agree([&] { check(j.model, j.plan); });
  j.groups = std::make_unique<ParallelGroups>(ParallelGroups::make(j.plan.group, j.plan.pp, j.plan.dp));

  const auto t0 = std::chrono::steady_clock::now();
  world.agree([&] {
    j.transformer = std::make_unique<Transformer>(j.model, *j.backend, TensorParallelGroup(&j.groups->tp, j.backend.get()),
                                                  j.plan.share_of(world.rank()), j.plan.layers_of(world.rank()),
                                                  j.plan.spd_drop);
  });
  j.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return j;
}

}  // namespace lowsync
