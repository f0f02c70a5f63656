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

TEST(TensorParallel, WaitsTheTimedPassesShowedAreAddedToEveryTpPass) {
  // 30 ms of waits per tp pass (a descheduled rank at its syncs): the long row stays on one replica.
  TensorParallelCosts c{0.6, 16, 0, 0};
  c.wait_s = 0.03;
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, c);
  EXPECT_NEAR(p.tp_predicted().fixed, 0.006 + 0.03, 1e-12);
  EXPECT_NEAR(p.tp_predicted().per_row, 0.0006, 1e-12);
  EXPECT_EQ(p.decide(0, {rows(1, 200)}, 0), RuntimeMode::DataParallel);
}

// The timed syncs' count: the full count where calls are quick (shared memory; a 64-row sync at
// 1 Gbit/s, 2.7 ms measured), cut to the budget over a slow link (19.6 ms at 100 Mbit/s: 5 calls
// instead of 32, 0.1 s instead of 0.63 s), never below 4.
TEST(TensorParallel, SyncProbeCallsFitTheBudgetOverASlowLink) {
  EXPECT_EQ(sync_probe_calls(20e-6, 32), 32);
  EXPECT_EQ(sync_probe_calls(2.7e-3, 32), 32);
  EXPECT_EQ(sync_probe_calls(19.6e-3, 32), 5);
  EXPECT_EQ(sync_probe_calls(0.55e-3, 64), 64);  // a one-row sync at 100 Mbit/s, 500 us: 35 ms for 64
  EXPECT_EQ(sync_probe_calls(0.3, 32), 4);       // slower still: a mean of 4
  EXPECT_EQ(sync_probe_calls(0.3, 2), 2);        // never more than asked
  EXPECT_EQ(sync_probe_calls(0.0, 32), 32);      // below the clock's resolution
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
  {
    // The first decision's plan: dp, then tp for the long row's batch. In dp the long row, handed out
    // last, starts once its replica's 40 short rows have used their slots: 160 + 200 steps.
    const RuntimeDecision& first = p.decisions()[0];
    EXPECT_EQ(first.switch_batch, 20);
    EXPECT_NEAR(first.predicted_dp_s, 360 * 0.01 + 840 * 0.001 + 328 * 0.0001, 1e-9);
    EXPECT_NEAR(first.predicted_switch_s, (160 * 0.01 + 640 * 0.001 + 320 * 0.0001) + 200 * 0.0066 + 8 * 0.00006, 1e-9);
    EXPECT_LT(first.predicted_switch_s, first.predicted_tp_s);
    EXPECT_EQ(first.predicted_s(), first.predicted_switch_s);
  }
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

TEST(TensorParallel, TheJobsOwnPassesCorrectThePriors) {
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, {0.5, 16, 0.0001, 0});
  EXPECT_NEAR(p.tp_predicted().fixed, 0.005 + 16 * 0.0001, 1e-12);
  // The machine runs twice as slow as the profile said: dp passes of 1 and 4 rows at twice the prior.
  for (int i = 0; i < 4; ++i) p.measured(RuntimeMode::DataParallel, 1 + 3 * (i % 2), 0, 2 * (i % 2 ? 0.014 : 0.011));
  EXPECT_NEAR(p.dp_cost().fixed, 0.02, 1e-9);
  EXPECT_NEAR(p.dp_cost().per_row, 0.002, 1e-9);
  // So does a tp pass's compute (its syncs: the latency timed at the start).
  EXPECT_NEAR(p.tp_predicted().fixed, 0.01 + 16 * 0.0001, 1e-9);
  EXPECT_NEAR(p.tp_predicted().per_row, 0.001, 1e-9);
  // One long row left: 200 steps of 22 ms on one replica, or of 12.6 ms on the tp group.
  EXPECT_EQ(p.decide(0, {rows(1, 200)}, 0), RuntimeMode::TensorParallel);
  EXPECT_NEAR(p.decisions()[0].predicted_dp_s, 200 * 0.022 + 8 * 0.0001, 1e-9);  // no prefill measured: the prior's per token
  // Measured tp passes replace the prediction.
  p.measured(RuntimeMode::TensorParallel, 1, 0, 0.03);
  p.measured(RuntimeMode::TensorParallel, 3, 0, 0.05);
  EXPECT_NEAR(p.tp_cost().fixed, 0.02, 1e-9);
  EXPECT_NEAR(p.tp_cost().per_row, 0.01, 1e-9);
  p.finish(3.0);
  EXPECT_EQ(p.last_evaluation().measured_s, 3.0);
}

TEST(RuntimePlanner, StartsTensorParallelWhenItWinsTheWholeJob) {
  // Three batches of 4 long rows on two replicas: dp runs two of them one after the other on one
  // replica (200 steps); the tp group, whose rank computes 0.4 of a replica's pass, runs all 12
  // rows in 300 steps at 0.4 the cost, and beats switching after the first two batches too.
  RuntimePlanner p(2, 4, {0.01, 0.001, 0.0001}, {0.4, 16, 0, 0});
  EXPECT_EQ(p.decide(0, std::vector<RowsWork>(3, rows(4, 100)), 0), RuntimeMode::TensorParallel);
  ASSERT_EQ(p.decisions().size(), 1u);
  const RuntimeDecision& d = p.decisions()[0];
  EXPECT_EQ(d.batch, 0);
  EXPECT_EQ(d.rows_left, 12);
  EXPECT_NEAR(d.predicted_dp_s, 200 * 0.01 + 800 * 0.001 + 64 * 0.0001, 1e-9);
  EXPECT_NEAR(d.predicted_tp_s, 0.4 * (300 * 0.01 + 1200 * 0.001 + 96 * 0.0001), 1e-9);
  EXPECT_EQ(d.switch_batch, 2);  // dp for two batches, one per replica, then tp for the third
  EXPECT_NEAR(d.predicted_switch_s, 1.4032 + 0.4 * 1.4032, 1e-9);
  EXPECT_EQ(d.predicted_s(), d.predicted_tp_s);
}

TEST(QueuedWork, ALongRowHandedOutAfterShortOnesEndsAfterThem) {
  const PassCost c{1.0, 0, 0};
  RowsWork shorts = rows(8, 10), one_long = rows(1, 50);
  QueuedWork q;
  q.then(shorts, 4);  // 80 row-steps over 4 slots: 20 steps
  q.then(one_long, 4);  // starts at step 20
  EXPECT_NEAR(q.seconds(c, 4), 70, 1e-12);
  QueuedWork beside;  // with room in the slots, the long row runs beside the short ones
  beside.then(rows(2, 10), 4);
  beside.then(one_long, 4);
  EXPECT_NEAR(beside.seconds(c, 4), 50, 1e-12);
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

// Hand-out sizes (dp). One RowsWork per row: n rows of `new_tokens` new tokens each.
std::vector<RowsWork> row_list(int n, int64_t new_tokens) {
  std::vector<RowsWork> out;
  for (int i = 0; i < n; ++i) {
    RowsWork w;
    w.add(8, new_tokens);
    out.push_back(w);
  }
  return out;
}

TEST(DpMakespan, HandOutsGoWhereTheyEndSoonestAndRunBesideWhatIsHeld) {
  const PassCost c{0.01, 0.001, 0};
  const std::vector<RowsWork> two_long = row_list(2, 100), one_long = row_list(1, 100);
  // Two long rows, both replicas free: in one hand-out, one replica runs both (100 steps of 2
  // rows); one now and one later, each replica one (100 steps of 1 row).
  EXPECT_NEAR(dp_makespan(c, {RowsWork{}, RowsWork{}}, two_long, {}, 8), 100 * 0.012, 1e-9);
  EXPECT_NEAR(dp_makespan(c, {RowsWork{}, RowsWork{}}, one_long, one_long, 8), 100 * 0.011, 1e-9);
  // One replica holds a row of 500 steps: both rows go to the other.
  RowsWork long_row;
  long_row.add(8, 500);
  EXPECT_NEAR(dp_makespan(c, {long_row, RowsWork{}}, one_long, one_long, 8), 500 * 0.011, 1e-9);
  // Continuous batching: a replica runs a hand-out beside the rows it holds, not after them.
  RowsWork two;
  two.add(8, 100);
  two.add(8, 100);
  EXPECT_NEAR(dp_makespan(c, {two, two}, two_long, {}, 8), 100 * 0.014, 1e-9);
}

// Two replicas, decode steps of 10 ms + 8 ms per row (per-row cost dominates: compute-bound).
RuntimePlanner compute_bound() { return RuntimePlanner(2, 8, {0.010, 0.008, 0.0001}, {0.6, 16, 0.01, 0}); }

TEST(HandOutRows, ALastBatchOfLongRowsIsSpreadOverTheReplicas) {
  RuntimePlanner p = compute_bound();
  // Nothing held, one batch of 4 long rows left: two each (100 steps of 2 rows on each replica).
  EXPECT_EQ(p.hand_out_rows(7, {row_list(4, 100)}, 1.0), 2);
  ASSERT_EQ(p.hand_outs().size(), 1u);
  const HandOutDecision& h = p.hand_outs()[0];
  EXPECT_EQ(h.batch, 7);
  EXPECT_EQ(h.batch_rows, 4);
  EXPECT_EQ(h.rows_left, 4);
  EXPECT_NEAR(h.predicted_s, 100 * (0.010 + 2 * 0.008) + 2 * 8 * 0.0001, 1e-9);
  EXPECT_NEAR(h.predicted_whole_s, 100 * (0.010 + 4 * 0.008) + 4 * 8 * 0.0001, 1e-9);
  p.finish(4.0);
  EXPECT_NEAR(p.hand_outs()[0].measured_s, 3.0, 1e-12);
}

TEST(HandOutRows, AnEarlyBatchGoesWholeWhenLaterHandOutsCanBalance) {
  RuntimePlanner p = compute_bound();
  // 8 short rows now, then 8 short and 2 long: the long ones can still be spread when their turn
  // comes, so this batch goes whole.
  std::vector<RowsWork> later = row_list(8, 16), tail = row_list(2, 96);
  later.insert(later.end(), tail.begin(), tail.end());
  EXPECT_EQ(p.hand_out_rows(0, {row_list(8, 16), later}, 0), 8);
  EXPECT_TRUE(p.hand_outs().empty());
}

TEST(HandOutRows, WholeBatchesWhileManyRowsWait) {
  RuntimePlanner p = compute_bound();
  // 80 rows left (over 4 hand-outs of 8 per replica): whole batches, no decision recorded.
  EXPECT_EQ(p.hand_out_rows(0, std::vector<std::vector<RowsWork>>(10, row_list(8, 100)), 0), 8);
  EXPECT_TRUE(p.hand_outs().empty());
}

TEST(HandOutRows, WholeWhenTheOtherReplicaIsBusyLongerAnyway) {
  RuntimePlanner p = compute_bound();
  p.handed_out(0, rows(8, 1000), 0);  // one replica holds ~74 s of work
  // A batch of 4 short rows: the free replica runs it whole, long before the other ends.
  EXPECT_EQ(p.hand_out_rows(1, {row_list(4, 10)}, 0.1), 4);
  EXPECT_TRUE(p.hand_outs().empty());
}

TEST(HandOutRows, FixedCostDominatedStepsKeepWholeBatches) {
  // Decode steps of 50 ms + 0.1 ms per row (weight-read bound): splitting 4 rows 2 + 2 saves 0.2
  // ms a step of 50: far under the 15% a cut needs, so the batch goes whole.
  RuntimePlanner p(2, 8, {0.050, 0.0001, 0}, {0.6, 16, 0.01, 0});
  EXPECT_EQ(p.hand_out_rows(3, {row_list(4, 100)}, 0), 4);
  // Nor when the other replica holds rows: it would run more beside them at almost no cost.
  p.handed_out(2, rows(2, 100), 0);
  EXPECT_EQ(p.hand_out_rows(3, {row_list(4, 100)}, 0), 4);
  EXPECT_TRUE(p.hand_outs().empty());
}

TEST(HandOutRows, ForcedSizeCutsEveryLargerBatch) {
  // Weight-read bound steps (no predicted gain), but every hand-out forced to one row.
  RuntimePlanner p(2, 4, {0.050, 0.0001, 0}, {0.6, 16, 0, 0}, -1, 1);
  EXPECT_EQ(p.hand_out_rows(0, std::vector<std::vector<RowsWork>>(40, row_list(4, 100)), 0), 1);
  ASSERT_EQ(p.hand_outs().size(), 1u);
  EXPECT_EQ(p.hand_outs()[0].rows, 1);
  EXPECT_GT(p.hand_outs()[0].predicted_s, 0);
  EXPECT_EQ(p.hand_out_rows(1, {row_list(1, 100)}, 0), 1);  // a batch of one row: nothing to cut
  EXPECT_EQ(p.hand_outs().size(), 1u);
}

TEST(HandOutRows, ForcedSwitchKeepsWholeBatches) {
  RuntimePlanner p = two_replicas(5);
  EXPECT_EQ(p.hand_out_rows(0, {row_list(4, 100)}, 0), 4);
}

}  // namespace
}  // namespace lowsync
