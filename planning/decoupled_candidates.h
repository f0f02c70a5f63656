#pragma once
// parallel.decoupled.from: decoupled checkpoints (python/decoupled) of the job's model that the
// planner may run instead of it. Their coupled layers are an accuracy knob, as SPD's drop set is:
// more coupled layers, more syncs per pass (2 x coupled + segments) and a closer match to the
// model. Each checkpoint is checked against the job's model (the base digest its fidelity.yaml
// records, and its shapes) and held to parallel.decoupled.budget by that measured fidelity; those
// within are planned as models of their own (their bp grids, syncs, memory) beside the model's
// own candidates, and the cost model chooses among them all as among any plans.
#include "io/job_config.h"
#include "io/model_config.h"
#include "planning/plan.h"
#include "planning/planner.h"
#include "planning/profile.h"

namespace lowsync {

// Adds the candidates of every listed checkpoint within the budget to `result` (their models to
// result.checkpoints; bp = 1 left out: one rank computing every sub-block is the model's own dp,
// less exact) and one line per checkpoint outside it to result.refused. UserError naming the
// directory when a checkpoint is not a decoupled model of the job's model, or has no fidelity.yaml
// (or not the budget's metric) while a budget is set.
void add_decoupled_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                              const Workload& work, const MemoryBudget& memory, PlannerResult& result);

// The model a plan runs: the decoupled checkpoint of parallel.decoupled.from it was made for
// (plan.yaml's made_for.model), else the job's model.
ModelConfig model_of_plan(const Plan& plan, const JobConfig& job, const ModelConfig& job_model);

}  // namespace lowsync
