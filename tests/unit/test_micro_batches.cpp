// A pipeline's micro-batch count: the round and fill formulas (planning/pipeline_round.h) worked by
// hand, the cost model's choice under parallel.micro_batches: auto on constructed profiles (one per
// stage on a fast link, more when a hand-over's latency dominates), the key's parsing, and the
// run-time re-choice from measured rounds worked by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/error.h"
#include "planning/make_plan.h"
#include "planning/micro_batch_planner.h"
#include "planning/micro_batches.h"
#include "planning/pipeline_round.h"
#include "planning/planner.h"
#include "tests/unit/smollm2_shapes.h"

using namespace lowsync;

namespace {

// A stage's pass over b rows: 1 ms fixed (reading its weights) + 0.25 ms a row.
double stage_ms(double rows) { return 1.0 + 0.25 * rows; }

// 8 rows over 2 stages in M micro-batches of 8 / M rows each; the hand-over and the tokens' way
// back each take `latency_ms`, of which the link is busy 0.01 ms.
double round_ms(int m, double latency_ms) {
  const double t = stage_ms(8.0 / m);
  return pipeline_round_seconds({{t, t}, {latency_ms}, {0.01}, latency_ms}, m);
}

}  // namespace

// round(M) = max(M x busiest stage or link, trip: stages + hand-overs + token return), by hand:
//   fast link (0.05 ms each way):  M=1: t=3,   max(3, 6.1) = 6.1   (the trip: one stage idles)
//                                  M=2: t=2,   max(4, 4.1) = 4.1   (best: both stages busy)
//                                  M=4: t=1.5, max(6, 3.1) = 6     (the fixed cost 4 times)
//   slow link (2.5 ms each way):   M=1: max(3, 11) = 11; M=2: max(4, 9) = 9;
//                                  M=4: max(6, 8) = 8 (best); M=8: t=1.25, max(10, 7.5) = 10
// The latency is paid by the trip only: a send does not keep its stage busy.
TEST(PipelineRound, DecodeRoundByHand) {
  EXPECT_DOUBLE_EQ(round_ms(1, 0.05), 6.1);
  EXPECT_DOUBLE_EQ(round_ms(2, 0.05), 4.1);
  EXPECT_DOUBLE_EQ(round_ms(4, 0.05), 6.0);
  EXPECT_DOUBLE_EQ(round_ms(1, 2.5), 11.0);
  EXPECT_DOUBLE_EQ(round_ms(2, 2.5), 9.0);
  EXPECT_DOUBLE_EQ(round_ms(4, 2.5), 8.0);
  EXPECT_DOUBLE_EQ(round_ms(8, 2.5), 10.0);
  // Uneven stages: the slower one paces a full pipeline (3 x 2 = 6 > 1 + 2 + 0.5 + 0.5).
  EXPECT_DOUBLE_EQ(pipeline_round_seconds({{1, 2}, {0.5}, {0.1}, 0.5}, 3), 6.0);
  // A link busy 3 ms per micro-batch (its bandwidth) paces it like a stage: max(2 x 3, 1 + 1 + 3.5 + 0.5).
  EXPECT_DOUBLE_EQ(pipeline_round_seconds({{1, 1}, {3.5}, {3}, 0.5}, 2), 6.0);
  EXPECT_DOUBLE_EQ(pipeline_round_seconds({{1, 1}, {3.5}, {3}, 0.5}, 3), 9.0);
  // One stage: nothing travels, M passes in turn.
  EXPECT_DOUBLE_EQ(pipeline_round_seconds({{2}, {}, {}, 0}, 3), 6.0);
}

// fill(M) = stages + hand-overs + (M - 1) x busiest: the first micro-batch through stages of 1 and
// 2 ms and a 0.5 ms hand-over (3.5 ms), then one more every 2 ms.
TEST(PipelineRound, PrefillFillsAndDrains) {
  EXPECT_DOUBLE_EQ(pipeline_fill_seconds({{1, 2}, {0.5}, {0.2}, 0}, 1), 3.5);
  EXPECT_DOUBLE_EQ(pipeline_fill_seconds({{1, 2}, {0.5}, {0.2}, 0}, 3), 7.5);
  EXPECT_DOUBLE_EQ(pipeline_fill_seconds({{2}, {}, {}, 0}, 4), 8.0);
}

namespace {

// Two equal ranks whose one-row decode product is bandwidth-bound (8 GFLOP/s against 60 at 32
// rows: a pass's cost mostly fixed), a point-to-point link of the given latency between them.
Profile two_ranks(double link_latency_s) {
  Profile p;
  p.world = 2;
  p.model = "smollm2";
  p.prefill_rows = 512;
  p.decode_rows = 32;
  for (int r = 0; r < 2; ++r) {
    RankProfile rp;
    rp.rank = r;
    rp.layers = {100, 8, 60};
    rp.head = {100, 8, 60};
    rp.read_bytes_per_s = 20e9;
    rp.usable_memory_bytes = int64_t(8) << 30;
    p.ranks.push_back(rp);
  }
  AllReduceLink a;
  a.ranks = {0, 1};
  a.link = {link_latency_s, 1e9};
  p.all_reduce.push_back(a);
  PointToPointLink l;
  l.from = 0, l.to = 1, l.link = {link_latency_s, 1e9};
  p.point_to_point.push_back(l);
  return p;
}

Plan pipeline(const ModelConfig& m, int micro_batches) {
  return make_plan(m, {"generate", 2048, 16, 32}, 2, ReplicaSplit::Tensor, 1, 1, {}, {}, "job.yaml",
                   {2, {}, micro_batches});
}

}  // namespace

// On a fast link one micro-batch per stage keeps both busy with the fewest passes; when a
// hand-over's latency is several passes long, more micro-batches cover the trip. Every count
// 1 .. min(sequences, 4 x pp) is compared and the chosen one has the most rows/s.
TEST(MicroBatches, ChosenByTheCostModel) {
  const ModelConfig m = smollm2();
  const Workload work{32, 16, 256};  // short prompts, long answers: decode rounds dominate
  EXPECT_EQ(pipeline(m, 0).micro_batches, 2);  // auto without a profile: one per stage
  EXPECT_EQ(pipeline(m, 5).micro_batches, 5);  // a stated count stays

  const MicroBatchChoice fast = choose_micro_batches(pipeline(m, 0), m, two_ranks(5e-6), work);
  ASSERT_EQ(fast.compared.size(), 8u);
  EXPECT_EQ(fast.compared.front().count, 1);
  EXPECT_EQ(fast.compared.back().count, 8);
  EXPECT_EQ(fast.chosen, 2) << describe(fast);
  for (const MicroBatchOption& o : fast.compared) EXPECT_LE(o.rows_per_s, fast.compared[1].rows_per_s);
  // 2 x pp, the old default, pays each stage's fixed cost twice a round.
  EXPECT_GT(fast.compared[1].rows_per_s, 1.2 * fast.compared[3].rows_per_s) << describe(fast);

  const MicroBatchChoice slow = choose_micro_batches(pipeline(m, 0), m, two_ranks(50e-3), work);
  EXPECT_GT(slow.chosen, 2) << describe(slow);
  const auto best = std::max_element(slow.compared.begin(), slow.compared.end(),
                                     [](const MicroBatchOption& a, const MicroBatchOption& b) { return a.rows_per_s < b.rows_per_s; });
  EXPECT_EQ(best->count, slow.chosen);
  EXPECT_NE(describe(slow).find(std::to_string(slow.chosen) + ": "), std::string::npos);
  // The prediction with the chosen count is the cost model's for that plan.
  Plan chosen = pipeline(m, slow.chosen);
  EXPECT_DOUBLE_EQ(predict(chosen, m, two_ranks(50e-3), work).rows_per_s, best->rows_per_s);

  // Fewer sequences than 4 x pp: counts up to the sequences only.
  EXPECT_EQ(choose_micro_batches(pipeline(m, 0), m, two_ranks(5e-6), {32, 3, 256}).compared.size(), 3u);
  // No pipeline: nothing to choose.
  const Plan one = make_plan(m, {"generate", 2048, 16, 32}, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  EXPECT_TRUE(choose_micro_batches(one, m, two_ranks(5e-6), work).compared.empty());
}

// The planner picks every pipeline candidate's count under auto and shows what it compared; a
// count the job states is kept.
TEST(MicroBatches, PlannerShowsTheCountsCompared) {
  const ModelConfig m = smollm2();
  JobConfig job;
  job.path = "job.yaml";
  job.task = "generate";
  job.input = "/nonexistent.h5";
  job.batch.max_sequences = 16;
  const Profile p = two_ranks(50e-3);
  PlannerResult r = plan_candidates(job, m, p, {32, 16, 256});
  bool pipelined = false;
  for (const Candidate& c : r.candidates) {
    if (c.plan.pp < 2) continue;
    pipelined = true;
    EXPECT_EQ(c.plan.micro_batches, c.micro_batches.chosen);
    EXPECT_GT(c.plan.micro_batches, 2);
  }
  EXPECT_TRUE(pipelined);
  EXPECT_NE(planner_table(r, job, m).find("micro-batches "), std::string::npos) << planner_table(r, job, m);
  job.parallel.micro_batches = 3;
  r = plan_candidates(job, m, p, {32, 16, 256});
  for (const Candidate& c : r.candidates) {
    if (c.plan.pp < 2) continue;
    EXPECT_EQ(c.plan.micro_batches, 3) << c.label;
    EXPECT_TRUE(c.micro_batches.compared.empty());
  }
}

// parallel.micro_batches takes a count >= 1 or `auto` (the default); anything else is refused by name.
TEST(MicroBatches, KeyParses) {
  const std::string dir = testing::TempDir();
  auto job_with = [&](const std::string& extra) {
    const std::string path = dir + "/micro_batches_job.yaml";
    std::ofstream(path) << "model: m\ntask: generate\ninput: in.h5\noutput: out.h5\n" << extra;
    return load_job_config(path, {});
  };
  EXPECT_EQ(job_with("").parallel.micro_batches, 0);
  EXPECT_EQ(job_with("parallel: {pp: 2, micro_batches: auto}\n").parallel.micro_batches, 0);
  EXPECT_EQ(job_with("parallel: {pp: 2, micro_batches: 3}\n").parallel.micro_batches, 3);
  for (const std::string bad : {"0", "-2", "many"}) {
    try {
      job_with("parallel: {pp: 2, micro_batches: " + bad + "}\n");
      ADD_FAILURE() << bad << " was taken";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("parallel.micro_batches"), std::string::npos) << e.what();
    }
  }
}

// The run-time planner, worked by hand: two stages whose pass over b rows costs 1 ms + 0.25 ms a
// row, 8 rows, 8 slots, starting at 2 micro-batches (t(4) = 2 ms; round(2) = max(4, 4 + trip)).
TEST(MicroBatchPlanner, ReChoosesFromMeasuredRounds) {
  const std::vector<PassCost> stages = {{1e-3, 0.25e-3, 0}, {1e-3, 0.25e-3, 0}};
  const std::vector<int64_t> passes = {10, 10};
  MicroBatchPlanner p(2, 8, 2);
  // Not enough measured yet: no decision.
  EXPECT_EQ(p.decide(1, stages, passes, 8, 100, 0.1), 2);
  EXPECT_EQ(p.evaluations(), 0);
  // Rounds of 4 ms: the stages pace them (4 <= 1.05 x 2 x 2), the trip cannot be seen (0). The
  // formula: round(1) = max(3, 6) = 6, round(2) = 4, round(3) = max(5, 3.33) = 5, round(4) = 6: keeps 2.
  p.measured_round(2, 8, 4e-3, true);
  p.measured_round(2, 8, 4e-3, true);
  EXPECT_EQ(p.decide(2, stages, passes, 8, 90, 0.2), 2);
  ASSERT_EQ(p.decisions().size(), 1u);
  EXPECT_NEAR(p.decisions()[0].predicted(1), 6e-3, 1e-12);
  EXPECT_NEAR(p.decisions()[0].predicted(2), 4e-3, 1e-12);
  EXPECT_NEAR(p.decisions()[0].predicted(3), 5e-3, 1e-12);
  // Rounds of 9 ms: the trip paced them, 9 - 4 = 5 ms outside the stages (the median of
  // 0, 0, 5, 5, 5). round(2) = 9 (measured alike: correction 1); round(5) = max(5 x 1.4, 2.8 + 5)
  // = 7.8, the best (round(4) = max(6, 8) = 8, round(6) = max(8, 7.67) = 8), 13% shorter: 5.
  for (int i = 0; i < 3; ++i) p.measured_round(2, 8, 9e-3, true);
  EXPECT_EQ(p.decide(3, stages, passes, 8, 80, 0.3), 5);
  EXPECT_NEAR(p.trip_s(), 5e-3, 1e-12);
  EXPECT_NEAR(p.decisions().back().predicted(5), 7.8e-3, 1e-12);
  EXPECT_NEAR(p.decisions().back().predicted(2), 9e-3, 1e-12);
  // 5 measures 12 ms a round: the trip is 12 - 2.8 = 9.2 ms; the formula's round(2) is then
  // 4 + 9.2 = 13.2, but 2 measured 9 ms where the formula said 13.2 (its rounds' median), so 9;
  // round(5) = 12 as measured, round(8) = max(10, 2.5 + 9.2) = 11.7 (not run: the current
  // count's correction, 1). Back to 2, 25% shorter.
  p.measured_round(5, 8, 12e-3, true);
  p.measured_round(5, 8, 12e-3, true);
  EXPECT_EQ(p.decide(4, stages, passes, 8, 70, 0.4), 2);
  const MicroBatchDecision& d = p.decisions().back();
  EXPECT_NEAR(p.trip_s(), 9.2e-3, 1e-12);
  EXPECT_NEAR(d.predicted(2), 9e-3, 1e-12);
  EXPECT_NEAR(d.predicted(5), 12e-3, 1e-12);
  EXPECT_NEAR(d.predicted(8), 11.7e-3, 1e-12);
  EXPECT_EQ(d.from, 5);
  EXPECT_EQ(d.rows_left, 70);
  EXPECT_NE(p.json().find("\"measured_over_formula\""), std::string::npos);
  // The measured round of the count each decision chose: 9 ms of 2 before the change to 5 (its
  // decision kept 2), 12 ms of 5.
  EXPECT_NEAR(p.decisions()[1].measured_round_s, 12e-3, 1e-12);
  // A forced change happens whatever the prediction, with too little measured.
  MicroBatchPlanner forced(2, 8, 2, 1, 3);
  EXPECT_EQ(forced.decide(1, stages, passes, 8, 10, 0.0), 3);
}
