#include "jobs/plan_job.h"

#include "io/log.h"

#include <cstdio>

#include "jobs/load_job.h"
#include "jobs/make_backend.h"
#include "planning/decoupled_candidates.h"
#include "planning/planner.h"

namespace lowsync {

void plan_job(const JobConfig& job_as_given, const std::string& out_path, const std::string& candidates_json) {
  Communicator world(MPI_COMM_WORLD, "world");
  JobConfig job = with_resolved_threads(job_as_given, world);  // `threads: auto` (collective)
  ModelConfig model;
  std::unique_ptr<Backend> backend;
  world.agree([&] {
    model = load_model_config(job.model);
    job = with_resolved_weights(job);  // `weights.dtype: auto`: the checkpoint's
    backend = make_backend(job, world);
  });
  const Plan plan = choose_plan(job, model, world, *backend, memory_budget(job, world), candidates_json);
  world.agree([&] {
    if (world.rank() != 0) return;
    plan.save(out_path, model_of_plan(plan, job, model));  // the job's model, or the decoupled checkpoint chosen
    log::summary("lowsync: plan %s written to %s; run it with --set parallel.plan=%s", plan.describe().c_str(),
                 out_path.c_str(), out_path.c_str());
  });
}

}  // namespace lowsync
