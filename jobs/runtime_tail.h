#pragma once
// What executes the runtime planner's decisions (planning/runtime_planner.h) in a generate job with
// `plan.runtime: true`: world rank 0 asks the planner before it hands out each batch; when the
// planner turns to tp, the batches left are held back, the replicas finish the rows they hold, and
// every rank then runs the rest as one tensor-parallel group, its share taken from the whole model
// it already holds (Transformer's share-view constructor). Who computes what is the planner's;
// this file only wires it to the work queue and the report.
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/continuous_generate.h"
#include "jobs/work_queue.h"
#include "layers/backend.h"
#include "layers/model.h"
#include "mpi_comm/parallel_groups.h"
#include "planning/plan.h"
#include "planning/runtime_planner.h"

namespace lowsync {

struct RuntimeTail {
  Plan plan;                                // the tp group's: every rank of the world, even shares
  std::unique_ptr<ParallelGroups> groups;   // its grid: one replica of every rank
  std::unique_ptr<Transformer> model;       // this rank's tp share, viewed from the whole model it holds
  std::unique_ptr<RuntimePlanner> planner;  // used on world rank 0 (the others follow its queue)
  std::vector<RowsWork> row_work;           // [row - first row of the run]: what each row may cost
  std::vector<Batch> batches;               // this run's batches (as planned; hand-outs may cut them)
  int64_t tail_first_row = -1;              // the first row the tp group ran (-1: none)
  double setup_s = 0;                       // seconds the tp views, the timed syncs and one-row passes took
  double timed_dp_one_s = 0, timed_tp_one_s = 0;  // world rank 0: the one-row passes timed side by side
  std::map<int64_t, int64_t> hand_out_row;  // world rank 0: hand-out index -> its first row
  std::vector<int64_t> switch_rows;         // [decision]: the first row of its planned later switch (-1: none)
  std::chrono::steady_clock::time_point last_pass_end;  // world rank 0: when `measured` was last called
  int last_pass_mode = -1;                  // ... in that mode (RuntimeMode; -1: never)

  // World rank 0: the planner decides before each hand-out of `queue` (over `batches`) its mode and
  // (dp) its rows, and hears of every batch that completes. Decisions are logged as they are made.
  // t0: the run's start.
  void attach(WorkQueue& queue, std::chrono::steady_clock::time_point t0);
  // World rank 0, after each pass its group ran in `mode`: the planner hears the wall time since
  // the previous pass (the pass, and what the loop around it did: hand-outs, results written),
  // since that is what the job's remaining time is made of; for the first pass in a mode, the pass.
  void measured(RuntimeMode mode, const ContinuousGenerator::PassRecord& pass);
  // The run report's part: every decision with its predicted and measured remaining time, and the
  // pass costs measured in each mode (JSON object; a few lines of text).
  std::string json() const;
  std::string text() const;
};

// Collective over world, agreed (setup errors print once): checks that the job's plan can turn
// tensor-parallel at runtime (a dp grid of ranks that hold the whole model, CPU backend), builds
// the tp group's plan, grid and model (views of `whole`), times a few all-reduces of the tp group
// and one-row passes of each mode side by side, and builds the planner with the cost model's priors
// from the job's profile (plan.profile, measured when missing); the job's own passes correct them.
std::unique_ptr<RuntimeTail> make_runtime_tail(const JobConfig& job, const ModelConfig& model, const Plan& plan,
                                               Communicator& world, Backend& backend, Transformer& whole,
                                               const PromptReader& input, const std::vector<Batch>& batches);

}  // namespace lowsync
