#pragma once
// Carries out the micro-batch planner's re-choice in a pipelined generate job (continuous
// batching, parallel.micro_batches: auto): every rank fits its stage's pass cost to its own
// passes; between work-queue batches the stages' fits go to the replica's leader (one all-gather
// over the pipeline), which decides (planning/micro_batch_planner.h) and sends the count to every
// rank of the replica (one broadcast), and every stage re-splits its slots at the same visit.
#include <cstdint>
#include <memory>
#include <utility>

#include "jobs/continuous_generate.h"
#include "mpi_comm/parallel_groups.h"
#include "planning/micro_batch_planner.h"

namespace lowsync {

class MicroBatchReplan {
 public:
  // slots: batch.max_sequences; current: the plan's count. LOWSYNC_MICRO_BATCHES_AT=B:M (tests)
  // changes the count to M at the replica's B-th batch whatever the prediction.
  MicroBatchReplan(ParallelGroups& groups, int slots, int current);

  // After each visit, on every rank: its stage's pass, and on the leader the round it ended.
  void measured(const ContinuousGenerator& generator);
  // Every rank of the replica together, after taking a batch: the count decided on the leader,
  // applied on every stage. Returns the batches that ended while the owed tokens came in.
  ContinuousGenerator::Finished between_batches(ContinuousGenerator& generator, double now_s, int64_t rows_left);

  const MicroBatchPlanner& planner() const { return planner_; }

 private:
  // forced: LOWSYNC_MICRO_BATCHES_AT's (batch, count), read once; batch -1 when unset.
  MicroBatchReplan(ParallelGroups& groups, int slots, int current, std::pair<int64_t, int> forced);

  ParallelGroups& groups_;
  MicroBatchPlanner planner_;
  PassFit fit_;  // this rank's stage's passes
  int64_t batches_ = 0;
};

// The replan of a job, or null where the count stays as planned: not generate with continuous
// batching in a pipeline, or a count the job (or its plan file) states.
std::unique_ptr<MicroBatchReplan> make_micro_batch_replan(const JobConfig& job, ParallelGroups& groups, int current);

}  // namespace lowsync
