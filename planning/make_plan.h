#pragma once
// Plans from a job: the one its parallel keys state (tp or bp, dp, speeds, spd), or a saved plan
// file checked against the job. Every compatibility check between a model, a world and a grid
// lives here, each failing with one UserError naming its cause. `parallel: auto` is the planner's
// (planning/planner.h), which builds its candidates with make_plan too.
#include <string>
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"
#include "planning/plan.h"

namespace lowsync {

PlanLimits limits_of(const JobConfig& job);

// A pipeline: pp stages of consecutive layers (`stage_layers` per stage, empty = as even as the
// layers allow) and the micro-batches a batch is split into (0 = 2 x pp, enough to keep every
// stage busy while the others work).
struct PipelineChoice {
  int pp = 1;
  std::vector<int> stage_layers;
  int micro_batches = 0;
};

// A complete, checked plan: grid group x pp x dp over `world` ranks, shares in proportion to `speeds`
// (one per rank of a replica; empty = equal), the given SPD drop set (empty = none), memory filled.
// `where` names the source in errors (the job file, or a plan file).
Plan make_plan(const ModelConfig& model, const PlanLimits& limits, int world, ReplicaSplit split, int group, int dp,
               const std::vector<double>& speeds, std::vector<bool> spd_drop, const std::string& where,
               const PipelineChoice& pipeline = {}, int64_t memory_limit = 0);

// Checks a plan's grid and shares against the model and world (used for plans from files).
void check_plan(const Plan& plan, const ModelConfig& model, int world, const std::string& where);

// Completes a plan read from YAML (Plan::parse / load) for `model`: the drop set sized to its
// layers (refusing layers beyond them), checked by check_plan, memory computed.
void complete_parsed_plan(Plan& plan, const ModelConfig& model, int world, const std::string& where);

// The plan of a job that is not `parallel: auto`: from parallel.plan when given (refused, naming
// what differs, if it was made for another model, rank count or job limits), else from the
// parallel keys.
// `memory_limit`: bytes a rank may use (memory.limit resolved; 0: none); layers beyond it are
// streamed (Plan::resident_layers).
Plan plan_from_job(const JobConfig& job, const ModelConfig& model, int world, int64_t memory_limit = 0);

}  // namespace lowsync
