// The runtime planner's arithmetic (planning/runtime_planner.h) on constructed pass costs.
#include <gtest/gtest.h>

#include "planning/runtime_planner.h"

namespace lowsync {
namespace {

TEST(PassFit, RecoversTheLineOfDecodeAndPrefillPasses) {
  const PassCost truth{0.010, 0.002, 0.0005};
  PassFit fit;
  for (int rows : {1, 2, 4, 8, 8, 3}) fit.add(rows, 0, truth.seconds(rows, 0));
  fit.add(2, 40, truth.seconds(2, 40));
  fit.add(0, 10, truth.seconds(0, 10));
  const PassCost c = fit.cost({1, 1, 1});
  EXPECT_NEAR(c.fixed, truth.fixed, 1e-9);
  EXPECT_NEAR(c.per_row, truth.per_row, 1e-9);
  EXPECT_NEAR(c.per_token, truth.per_token, 1e-9);
  EXPECT_EQ(fit.passes(), 8);
}

TEST(PassFit, OneRowCountScalesThePrior) {
  PassFit fit;
  fit.add(4, 0, 0.6);
  const PassCost c = fit.cost({0.1, 0.05, 0.01});  // prior: 0.3 s at 4 rows; measured twice that
  EXPECT_NEAR(c.fixed, 0.2, 1e-12);
  EXPECT_NEAR(c.per_row, 0.1, 1e-12);
  EXPECT_NEAR(c.per_token, 0.01, 1e-12);  // no prefill measured: the prior's
}

TEST(RunSeconds, StepsAreTheFullestSlotOrTheLongestRow) {
  const PassCost c{1.0, 0.1, 0.01};
  RowsWork w;
  w.add(10, 4);
  w.add(10, 4);
  w.add(10, 40);  // one long row: 40 steps whatever the slots
  EXPECT_NEAR(run_seconds(c, w, 8), 40 * 1.0 + 48 * 0.1 + 30 * 0.01, 1e-9);
  EXPECT_NEAR(run_seconds(c, w, 1), 48 * 1.0 + 48 * 0.1 + 30 * 0.01, 1e-9);
  EXPECT_EQ(run_seconds(c, RowsWork{}, 4), 0);
}

TEST(TensorParallel, ComputeRatioFromTheTwoPredictionsAndSyncsOnTop) {
  Prediction dp, tp;
  dp.compute_s = 0.1;
  tp.compute_s = 0.06;
  EXPECT_NEAR(tp_compute_ratio(dp, tp), 0.6, 1e-12);
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, {0.5, 4, 0.001, 0.0002});
  const PassCost c = p.tp_predicted();
  EXPECT_NEAR(c.fixed, 0.005 + 4 * 0.001, 1e-12);
  EXPECT_NEAR(c.per_row, 0.0005 + 4 * 0.0002, 1e-12);
  EXPECT_NEAR(c.per_token, 0.00005 + 4 * 0.0002, 1e-12);
}

// Two replicas, a decode step fixed-cost dominated; a tp rank computes 0.6 of a replica's work and
// its syncs cost nothing (the ratio alone decides).
RuntimePlanner two_replicas(int64_t switch_at = -1) {
  return RuntimePlanner(2, 4, {0.01, 0.001, 0.0001}, {0.6, 16, 0, 0}, switch_at);
}

RowsWork rows(int n, int64_t new_tokens) {
  RowsWork w;
  for (int i = 0; i < n; ++i) w.add(8, new_tokens);
  return w;
}

TEST(RuntimePlanner, DataParallelWhileManyBatchesWait) {
  RuntimePlanner p = two_replicas();
  const std::vector<RowsWork> rest(20, rows(4, 16));
  EXPECT_EQ(p.decide(0, rest, 0), RuntimeMode::DataParallel);
  ASSERT_EQ(p.decisions().size(), 1u);
  EXPECT_LT(p.decisions()[0].predicted_dp_s, p.decisions()[0].predicted_tp_s);
}

TEST(RuntimePlanner, TensorParallelForOneLongBatchLeft) {
  RuntimePlanner p = two_replicas();
  std::vector<RowsWork> job(20, rows(4, 16));
  job.push_back(rows(1, 200));
  EXPECT_EQ(p.decide(0, job, 0), RuntimeMode::DataParallel);  // the short rows keep both replicas busy
  p.handed_out(0, rows(4, 16), 0);
  p.completed(0);
  // One batch of one long row left, nothing held: dp runs it on one replica, tp on both.
  EXPECT_EQ(p.decide(20, {rows(1, 200)}, 1.0), RuntimeMode::TensorParallel);
  ASSERT_EQ(p.decisions().size(), 2u);
  const RuntimeDecision& d = p.decisions()[1];
  EXPECT_EQ(d.batch, 20);
  EXPECT_NEAR(d.predicted_dp_s, 200 * 0.011 + 8 * 0.0001, 1e-9);  // the batch on one replica
  EXPECT_NEAR(d.predicted_tp_s / d.predicted_dp_s, 0.6, 0.05);
  // One-way: later hand-outs stay tp, and no new decision is recorded.
  EXPECT_EQ(p.decide(21, {rows(4, 16)}, 2.0), RuntimeMode::TensorParallel);
  EXPECT_EQ(p.decisions().size(), 2u);
  p.finish(5.0);
  EXPECT_NEAR(p.decisions()[1].measured_s, 4.0, 1e-12);
}

TEST(TensorParallel, TimedPassesWinOverTheCostModel) {
  TensorParallelCosts c{0.5, 16, 0, 0};
  c.batch = 4;
  c.dp_batch_s = 0.014, c.tp_batch_s = 0.028;  // tp twice as slow as dp, whatever the compute ratio says
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, c);
  PassCost tp = p.tp_predicted();
  EXPECT_NEAR(tp.fixed, 0.02, 1e-12);
  EXPECT_NEAR(tp.per_row, 0.002, 1e-12);
  EXPECT_NEAR(tp.per_token, 0.0002, 1e-12);
  for (int i = 0; i < 4; ++i) p.measured(RuntimeMode::DataParallel, 1 + 3 * (i % 2), 0, 2 * (i % 2 ? 0.014 : 0.011));
  tp = p.tp_predicted();  // the machine got twice as slow since: so does the tp prediction
  EXPECT_NEAR(tp.fixed, 0.04, 1e-9);
  EXPECT_EQ(p.decide(0, {rows(1, 200)}, 0), RuntimeMode::DataParallel);
  p.finish(3.0);
  EXPECT_EQ(p.last_evaluation().measured_s, 3.0);
}

TEST(RuntimePlanner, SlowSyncsKeepTheTailDataParallel) {
  // The same tail as above, but each of a tp pass's 16 syncs costs 1 ms: tp's step is 22 ms, dp's 11.
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, {0.6, 16, 0.001, 0});
  EXPECT_EQ(p.decide(0, {rows(1, 200)}, 0), RuntimeMode::DataParallel);
  EXPECT_GT(p.decisions()[0].predicted_tp_s, 1.9 * p.decisions()[0].predicted_dp_s);
}

TEST(RuntimePlanner, WaitingForHeldRowsCanOutweighTheTail) {
  RuntimePlanner p = two_replicas();
  p.handed_out(0, rows(1, 1000), 0);  // a replica holds a long row for ~11 s
  // The short row left: dp runs it beside the long one; tp would first wait for the long one.
  EXPECT_EQ(p.decide(1, {rows(1, 20)}, 0.1), RuntimeMode::DataParallel);
}

TEST(RuntimePlanner, ForcedSwitch) {
  RuntimePlanner p = two_replicas(2);
  const std::vector<RowsWork> rest(20, rows(4, 16));
  EXPECT_EQ(p.decide(0, rest, 0), RuntimeMode::DataParallel);
  EXPECT_EQ(p.decide(1, rest, 0), RuntimeMode::DataParallel);
  EXPECT_EQ(p.decide(2, rest, 0), RuntimeMode::TensorParallel);
  EXPECT_EQ(p.decisions().size(), 2u);
}

}  // namespace
}  // namespace lowsync
