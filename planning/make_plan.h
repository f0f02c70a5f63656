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
// layers allow) and the micro-batches a batch is split into (0 = auto: pp here, the count that
// keeps every stage busy with the fewest passes; planning/micro_batches.h chooses with a profile).
struct PipelineChoice {
  int pp = 1;
  std::vector<int> stage_layers;
  int micro_batches = 0;
};

// A complete, checked plan: grid group x pp x dp over `world` ranks, shares in proportion to `speeds`
// (one per rank of a replica; empty = equal), the given SPD drop set (empty = none), memory filled.
// `where` names the source in errors (the job file, or a plan file). `split_head`: the last
// stage's ranks split the output head's vocabulary in proportion to `speeds` too (a decoder with
// more than one rank per stage; otherwise ignored).
Plan make_plan(const ModelConfig& model, const PlanLimits& limits, int world, ReplicaSplit split, int group, int dp,
               const std::vector<double>& speeds, std::vector<bool> spd_drop, const std::string& where,
               const PipelineChoice& pipeline = {}, const MemoryBudget& memory = {}, bool split_head = false);

// Whether a split head's merge has to gather whole logits rows for this job: sampling that reads
// every logit (temperature, repetition / presence / frequency penalties) or top log-probs. Else
// (greedy generate, score) it merges a few numbers per row (layers/logit_summary.h).
bool split_head_gathers_rows(const JobConfig& job);

// parallel.split_head for a plan stated by the job's keys: true, false, or auto: split when the
// merge is a few numbers per row (split_head_gathers_rows false), a sync of a few bytes beside the
// 2 x layers all-reduces of hidden-size activations a pass already pays, against (P-1)/P of the
// head's compute; `parallel: auto` weighs both with the cost model instead (planning/planner.h).
bool wants_split_head(const JobConfig& job);

// Checks a plan's grid and shares against the model and world (used for plans from files).
void check_plan(const Plan& plan, const ModelConfig& model, int world, const std::string& where);

// Completes a plan read from YAML (Plan::parse / load) for `model`: the drop set sized to its
// layers (refusing layers beyond them), checked by check_plan, memory computed.
void complete_parsed_plan(Plan& plan, const ModelConfig& model, int world, const std::string& where);

// The plan of a job that is not `parallel: auto`: from parallel.plan when given (refused, naming
// what differs, if it was made for another model, rank count or job limits), else from the
// parallel keys.
// `memory`: bytes each rank may use (memory.limit resolved; none by default) and memory.pool;
// layers beyond a rank's limit are streamed (Plan::resident_layers), from a peer's memory under
// memory.pool: peer (Plan::pool_holder).
Plan plan_from_job(const JobConfig& job, const ModelConfig& model, int world, const MemoryBudget& memory = {});

}  // namespace lowsync
