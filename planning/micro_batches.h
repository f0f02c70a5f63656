#pragma once
// parallel.micro_batches: auto. The count of micro-batches a pipeline splits a batch into, chosen
// by the cost model on the job's profile: more micro-batches keep more stages busy, fewer keep each
// pass fuller (a pass's fixed cost, reading the stage's weights, is paid once per micro-batch) and
// send fewer messages; planning/pipeline_round.h has the formula the cost model applies.
#include <string>
#include <vector>

#include "io/model_config.h"
#include "planning/cost_model.h"
#include "planning/plan.h"
#include "planning/profile.h"

namespace lowsync {

struct MicroBatchOption {
  int count = 1;
  double rows_per_s = 0;  // the cost model's throughput of the plan with this count
};

struct MicroBatchChoice {
  int chosen = 1;
  std::vector<MicroBatchOption> compared;  // every count tried, ascending
};

// For a pipeline (plan.pp > 1): the counts 1 .. min(sequences per pass, 4 x pp), each predicted with
// the cost model, and the one with the most rows/s (the fewer on a tie: fewer messages). Throughput
// under either plan.objective: one sequence alone is one micro-batch whatever the count.
MicroBatchChoice choose_micro_batches(const Plan& plan, const ModelConfig& model, const Profile& profile,
                                      const Workload& work);

// The count without a profile to predict from: one per stage, the best of the formula when a pass's
// cost is mostly its fixed part and hand-overs cost little (ranks on one host).
int micro_batches_without_profile(int pp);

// "2 of 1-8 (rows/s 1: 10.5, 2: 15.2*, 3: 14.1, ...)" for logs and `lowsync plan`.
std::string describe(const MicroBatchChoice& choice);

}  // namespace lowsync
