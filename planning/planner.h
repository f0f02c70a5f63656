#pragma once
// The static planner (`lowsync plan`, `parallel: auto`): enumerates the plans the model and the
// world allow (dp x tp or dp x bp, even and speed-proportional shares, SPD drop sets within the
// job's accuracy budget when a calibration is given; the grids of decoupled checkpoints of the model
// within the job's fidelity budget, planning/decoupled_candidates.h), drops those that do not fit in
// a rank's memory, predicts each with the cost model and picks the best for plan.objective.
#include <limits>
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
  double cosine = std::numeric_limits<double>::quiet_NaN();  // a decoupled encoder's, from its fidelity.yaml
  int checkpoint = -1;          // index in PlannerResult::checkpoints; -1: the job's own model
  std::string label;            // e.g. "tp=2 speed-proportional, SPD 12/30"
  MicroBatchChoice micro_batches;  // a pipeline under parallel.micro_batches: auto: the counts compared
};

struct PlannerResult {
  std::vector<Candidate> candidates;
  int chosen = -1;
  std::string why;  // one sentence: what was compared and what won
  std::vector<ModelConfig> checkpoints;  // decoupled checkpoints (parallel.decoupled.from) with candidates
  std::vector<std::string> refused;      // those outside the budget: directory, syncs, fidelity, why
  const ModelConfig& model_of(const Candidate& c, const ModelConfig& job_model) const {
    return c.checkpoint < 0 ? job_model : checkpoints[c.checkpoint];
  }
};

// Pure: every candidate, predicted, and the choice. UserError when no candidate fits in memory
// (with each candidate's largest need against the smallest rank's usable memory).
// `memory`: memory.limit (none by default) and memory.pool; candidates then stream the layers
// beyond it (Plan::resident_layers, from a peer's memory under memory.pool: peer) and the cost
// model counts the streaming.
PlannerResult plan_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                              const Workload& work, const MemoryBudget& memory = {});

// Pure: the candidates of one model alone (its grids, shares, SPD drop sets, and the job's stated
// plan), predicted and checked against memory, none chosen and nothing refused.
PlannerResult enumerate_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
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
