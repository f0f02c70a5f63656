#pragma once
// The static planner (`lowsync plan`, `parallel: auto`): enumerates the plans the model and the
// world allow (dp x tp or dp x bp, even and speed-proportional shares, SPD drop sets within the
// job's accuracy budget when a calibration is given), drops those that do not fit in a rank's
// memory, predicts each with the cost model and picks the best for plan.objective.
#include <string>
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"
#include "layers/backend.h"
#include "mpi_comm/communicator.h"
#include "planning/cost_model.h"
#include "planning/micro_batches.h"
#include "planning/plan.h"
#include "planning/profile.h"

namespace lowsync {

struct Candidate {
  Plan plan;
  Prediction predicted;
  bool fits = true;             // every rank's planned memory within its usable memory
  double kl = 0, top1 = 1;      // accuracy cost against the exact model (SPD from the calibration)
  std::string label;            // e.g. "tp=2 speed-proportional, SPD 12/30"
  MicroBatchChoice micro_batches;  // a pipeline under parallel.micro_batches: auto: the counts compared
};

struct PlannerResult {
  std::vector<Candidate> candidates;
  int chosen = -1;
  std::string why;  // one sentence: what was compared and what won
};

// Pure: every candidate, predicted, and the choice. UserError when no candidate fits in memory
// (with each candidate's largest need against the smallest rank's usable memory).
// `memory`: memory.limit (none by default) and memory.pool; candidates then stream the layers
// beyond it (Plan::resident_layers, from a peer's memory under memory.pool: peer) and the cost
// model counts the streaming.
PlannerResult plan_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                              const Workload& work, const MemoryBudget& memory = {});

// The workload a job implies (mean prompt length from the input when it can be read, else a guess).
Workload workload_of(const JobConfig& job, const ModelConfig& model);

// The table `lowsync plan` prints: one row per candidate, the choice marked.
std::string planner_table(const PlannerResult& result, const JobConfig& job, const ModelConfig& model);

// Collective over world: plan.profile when it was made for this world and model (read by rank 0
// only: the others return an empty profile), else measured (and written there) by every rank.
// Agreed: errors are printed once.
Profile job_profile(const JobConfig& job, const ModelConfig& model, Communicator& world, Backend& backend);

// Collective over world: reads plan.profile (measuring it first, and writing it, when the file is
// missing or was made for another world or model), plans, prints the table on rank 0, and returns
// the chosen plan on every rank. Agreed: errors are printed once.
// `backend` is the job's: the profile times its kernels. `candidates_json`, when not empty, is
// where rank 0 writes every candidate (label, plan YAML, prediction, memory) for benchmarks.
Plan choose_plan(const JobConfig& job, const ModelConfig& model, Communicator& world, Backend& backend,
                 const MemoryBudget& memory = {}, const std::string& candidates_json = "");

// Every candidate as JSON: label, chosen, fits, kl, top1, the prediction's figures and the plan's YAML.
std::string candidates_json(const PlannerResult& result, const ModelConfig& model);

}  // namespace lowsync
