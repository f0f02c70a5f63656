#pragma once
// The micro-batch count re-chosen while a pipelined generate job runs (parallel.micro_batches:
// auto, continuous batching). Between work-queue batches the replica's leader predicts a decode
// round for each count from what the job measured so far: each stage's pass cost, fitted to its own
// passes as the runtime planner fits a replica's (fixed + per row + per prompt token: PassFit), and
// the time a micro-batch's trip spends outside the stages (hand-overs, the tokens' way back), from
// the rounds the first stage timed where the trip paced them. The round formula is
// planning/pipeline_round.h. Where a count has run already, its measured rounds correct the
// formula's (the formula misses what it does not model: on a loaded machine, stages descheduled
// while the others wait); a count not run yet takes the current count's correction. A count that
// gains clearly replaces the current one.
//
// Plain data: jobs/micro_batch_replan feeds it the rounds and the stages' fits and carries its
// answer to every stage; it keeps every decision, predicted and measured, for the run report.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "planning/runtime_planner.h"

namespace lowsync {

struct MicroBatchDecision {
  double at_s = 0;          // seconds into the run
  int64_t batch = 0;        // the replica's batches taken so far, this one's included
  int64_t rows_left = -1;   // rows of the job not yet written (world rank 0's replica; -1: not known)
  int rows = 0;             // rows a round was predicted for: the replica's running and waiting, at most its slots
  int from = 0, chosen = 0;  // micro-batch counts
  std::vector<std::pair<int, double>> predicted_round_s;  // [count, seconds of a decode round], corrected
  std::vector<std::pair<int, double>> correction;         // [count, measured / formula] of the counts that ran
  double trip_s = 0;        // a trip's time outside the stages, as estimated then
  std::vector<PassCost> stages;  // [stage] the pass costs the prediction used
  double measured_round_s = -1;  // mean decode round at `chosen` until the next decision; -1: none ran
  int measured_rounds = 0;
  std::string why;
  double predicted(int count) const;  // -1 when not predicted
};

class MicroBatchPlanner {
 public:
  // A change needs a predicted round at least this much shorter than the current count's: it costs
  // a refill of the pipeline (the later stages idle about one pass each), the fits come from a few
  // passes on a shared machine whose rounds vary by several percent, and a smaller gain could
  // flip back at the next batch.
  static constexpr double kGain = 0.10;

  // stages: of the pipeline; slots: batch.max_sequences; current: the plan's count. forced_batch >= 0:
  // at that batch (the replica's count of batches taken) change to forced_count whatever the
  // prediction (tests: LOWSYNC_MICRO_BATCHES_AT).
  MicroBatchPlanner(int stages, int slots, int current, int64_t forced_batch = -1, int forced_count = 0);

  // A round the first stage timed (every micro-batch one visit).
  void measured_round(int micro_batches, int rows, double seconds, bool decode_only);
  // Before the replica goes on after taking batch `batch`: the count from now on. stages: each
  // stage's fitted pass cost, and how many passes each fit saw; rows: running and waiting.
  int decide(int64_t batch, const std::vector<PassCost>& stages, const std::vector<int64_t>& stage_passes, int rows,
             int64_t rows_left, double now_s);

  // The round the formula predicts for `count` micro-batches of `rows` rows in all.
  double predict_round(const std::vector<PassCost>& stages, int rows, int count) const;
  // Measured over predicted, the median over the decode rounds `count` ran (at least two); 0: too few.
  double measured_over_predicted(const std::vector<PassCost>& stages, int count) const;
  int current() const { return current_; }
  double trip_s() const { return trip_s_; }
  const std::vector<MicroBatchDecision>& decisions() const { return decisions_; }
  int64_t evaluations() const { return evaluations_; }
  std::string json() const;  // the run report's `micro_batch_plan`
  std::string text() const;  // its lines in the text report

 private:
  struct Round {
    int rows = 0;
    double seconds = 0;
  };
  // From the decode-only rounds at the current count: a trip's time outside the stages where the
  // trip paced the round (round - sum of stage passes); unchanged where the stages paced it
  // (the trip is then hidden under their passes and cannot be seen).
  void estimate_trip(const std::vector<PassCost>& stages);

  int stages_, slots_, current_;
  int64_t forced_batch_;
  int forced_count_;
  double trip_s_ = 0;
  std::map<int, std::vector<Round>> rounds_;  // [count] its decode-only rounds (the last kKeep)
  static constexpr size_t kKeep = 32;
  std::vector<MicroBatchDecision> decisions_;
  int64_t evaluations_ = 0;
};

}  // namespace lowsync
