// The Plan: shares cover the model exactly with whole kv groups where the ranks allow, uneven and
// speed-proportional splits, kv replication when ranks outnumber kv heads, every refusal naming its
// cause, plan.yaml round trips, and the planner's choices on constructed profiles.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <numeric>

#include "io/error.h"
#include "planning/calibration.h"
#include "planning/make_plan.h"
#include "planning/memory_plan.h"
#include "planning/planner.h"
#include "planning/shares.h"
#include "tests/unit/user_error_text.h"
#include "tests/unit/smollm2_shapes.h"

using namespace lowsync;

namespace {

ModelConfig decoupled(int sub_blocks) {
  ModelConfig m = smollm2();
  m.bp.sub_blocks = sub_blocks;
  m.bp.sync_every = 2;
  for (int r = 0; r < sub_blocks; ++r) {
    m.bp.heads.push_back(3), m.bp.kv_heads.push_back(1), m.bp.ffn.push_back(1536 / sub_blocks);
  }
  return m;
}

// Every query head, kv head read and FFN column is covered exactly once (kv heads: read by the
// ranks whose query heads need them).
void expect_exact_cover(const ModelConfig& m, const std::vector<LayerShare>& shares) {
  std::vector<int> head(m.n_heads, 0), column(m.intermediate, 0);
  const int group = m.n_heads / m.n_kv_heads;
  for (const LayerShare& s : shares) {
    for (int h = s.heads.begin; h < s.heads.end(); ++h) {
      ++head[h];
      EXPECT_GE(h / group, s.kv_heads.begin);
      EXPECT_LT(h / group, s.kv_heads.end());
    }
    for (int c = s.ffn.begin; c < s.ffn.end(); ++c) ++column[c];
  }
  for (int n : head) EXPECT_EQ(n, 1);
  for (int n : column) EXPECT_EQ(n, 1);
  EXPECT_NO_THROW(check_shares(m, false, shares, "test"));
}

}  // namespace

TEST(Shares, EvenWhenRanksDivideEverything) {
  ModelConfig m = smollm2();
  m.n_heads = 12, m.n_kv_heads = 4, m.intermediate = 1024;
  const auto shares = tensor_shares(m, {1, 1, 1, 1});
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(shares[r].heads.begin, 3 * r);
    EXPECT_EQ(shares[r].heads.count, 3);
    EXPECT_EQ(shares[r].kv_heads.count, 1);
    EXPECT_EQ(shares[r].ffn.count, 256);
  }
  expect_exact_cover(m, shares);
}

TEST(Shares, WholeKvGroupsWhenThereAreEnough) {
  const ModelConfig m = smollm2();
  const auto shares = tensor_shares(m, {1, 1});  // 3 groups over 2 ranks: 2 + 1, the FFN evens it out
  EXPECT_EQ(shares[0].heads.count, 6);
  EXPECT_EQ(shares[1].heads.count, 3);
  EXPECT_EQ(shares[0].kv_heads.count + shares[1].kv_heads.count, 3);  // no kv head stored twice
  EXPECT_LT(shares[0].ffn.count, shares[1].ffn.count);
  for (const auto& s : shares) EXPECT_EQ(s.ffn.count % kFfnGrain, 0);
  const double p0 = share_layer_parameters(m, shares[0]), p1 = share_layer_parameters(m, shares[1]);
  EXPECT_NEAR(p0 / p1, 1.0, 0.05);  // balanced within a grain of FFN columns
  expect_exact_cover(m, shares);
}

TEST(Shares, KvHeadsReplicatedWhenRanksOutnumberThem) {
  const ModelConfig m = smollm2();
  const auto shares = tensor_shares(m, {1, 1, 1, 1});  // 9 heads over 4 ranks: 3 + 2 + 2 + 2
  int heads = 0, kv = 0;
  for (const auto& s : shares) heads += s.heads.count, kv += s.kv_heads.count;
  EXPECT_EQ(heads, 9);
  EXPECT_GT(kv, 3);  // the groups split across ranks are read (and cached) by each of them
  EXPECT_EQ(shares[2].heads.begin, 5);
  EXPECT_EQ(shares[2].kv_heads.begin, 1);  // heads 5, 6 read kv heads 1 and 2
  EXPECT_EQ(shares[2].kv_heads.count, 2);
  expect_exact_cover(m, shares);
}

TEST(Shares, SpeedProportional) {
  const ModelConfig m = smollm2();
  const auto shares = tensor_shares(m, {2, 1});
  const double p0 = share_layer_parameters(m, shares[0]), p1 = share_layer_parameters(m, shares[1]);
  EXPECT_NEAR(p0 / p1, 2.0, 0.1);
  expect_exact_cover(m, shares);
  const auto blocks = block_shares(decoupled(4), {3, 1});
  EXPECT_EQ(blocks[0].sub_blocks.count, 3);
  EXPECT_EQ(blocks[1].sub_blocks.begin, 3);
  EXPECT_EQ(blocks[1].sub_blocks.count, 1);
}

TEST(Shares, EveryRefusalNamesItsCause) {
  const ModelConfig m = smollm2();
  EXPECT_NE(refusal([&] { tensor_shares(m, std::vector<double>(10, 1.0)); }).find("exceeds the model's 9 attention heads"),
            std::string::npos);
  EXPECT_NE(refusal([&] { block_shares(decoupled(2), {1, 1, 1}); }).find("exceeds the decoupled model's 2 sub-blocks"),
            std::string::npos);
  auto shares = tensor_shares(m, {1, 1});
  shares[1].heads.begin = 5;  // overlaps rank 0
  EXPECT_NE(refusal([&] { check_shares(m, false, shares, "plan.yaml"); }).find("plan.yaml: rank 1: heads begin at 5; expected 6"),
            std::string::npos);
  shares = tensor_shares(m, {1, 1});
  shares[1].ffn.count -= 16;  // a gap at the end
  EXPECT_NE(refusal([&] { check_shares(m, false, shares, "p"); }).find("cover 1520 FFN columns but the model has 1536"),
            std::string::npos);
  shares = tensor_shares(m, {1, 1});
  shares[0].kv_heads.count = 1;  // heads 3..5 need kv head 1
  EXPECT_NE(refusal([&] { check_shares(m, false, shares, "p"); }).find("rank 0: kv heads [0, 1) but query heads [0, 6) read kv heads [0, 2)"),
            std::string::npos);
  const PlanLimits limits{"generate", 2048, 32, 32};
  EXPECT_NE(refusal([&] { make_plan(m, limits, 3, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml"); })
                .find("parallel.tp x parallel.dp = 2 x 1 but mpirun started 3 ranks"),
            std::string::npos);
  EXPECT_NE(refusal([&] { make_plan(m, limits, 2, ReplicaSplit::Block, 2, 1, {}, {}, "job.yaml"); }).find("needs a decoupled model"),
            std::string::npos);
  EXPECT_NE(refusal([&] { make_plan(decoupled(2), limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml"); })
                .find("is a decoupled model; run it with parallel.bp"),
            std::string::npos);
  std::vector<bool> drop(30, false);
  drop[3] = true;
  ModelConfig bert = smollm2();
  bert.family = Family::Bert, bert.n_kv_heads = 9;
  EXPECT_NE(refusal([&] { make_plan(bert, {"embed", 512, 8, 0}, 2, ReplicaSplit::Tensor, 2, 1, {}, drop, "j"); })
                .find("Sync-Point Drop needs a pre-LN decoder"),
            std::string::npos);
}

TEST(Plan, SyncScheduleAndYamlRoundTrip) {
  const ModelConfig m = smollm2();
  std::vector<bool> drop(30, false);
  drop[4] = drop[7] = true;
  const Plan p = make_plan(m, {"generate", 1024, 16, 64}, 4, ReplicaSplit::Tensor, 2, 2, {3, 1}, drop, "job.yaml");
  EXPECT_EQ(p.syncs_in_layer(0, m), 2);
  EXPECT_EQ(p.syncs_in_layer(4, m), 1);
  EXPECT_EQ(p.syncs_per_pass(m), 58);
  EXPECT_EQ(p.replica_of(3), 1);
  EXPECT_EQ(p.group_rank_of(3), 1);
  Plan q = Plan::parse(p.to_yaml(m), "plan.yaml");
  complete_parsed_plan(q, m, 4, "plan.yaml");
  EXPECT_EQ(q.to_yaml(m), p.to_yaml(m));
  ASSERT_EQ(q.shares.size(), 2u);
  EXPECT_EQ(q.shares[1].ffn.begin, p.shares[1].ffn.begin);
  EXPECT_EQ(q.limits, p.limits);

  const ModelConfig d = decoupled(4);
  const Plan b = make_plan(d, {"generate", 1024, 16, 64}, 2, ReplicaSplit::Block, 2, 1, {}, {}, "job.yaml");
  EXPECT_EQ(b.syncs_per_pass(d), 15);  // one merge every 2 layers
  Plan c = Plan::parse(b.to_yaml(d), "x");
  complete_parsed_plan(c, d, 2, "x");
  EXPECT_EQ(c.to_yaml(d), b.to_yaml(d));
  EXPECT_NE(refusal([&] { complete_parsed_plan(c, d, 3, "x"); }).find("mpirun started 3 ranks"), std::string::npos);
  EXPECT_NE(refusal([&] { Plan::parse("lowsync_plan: 1\nmade_for: {model: m}\n", "p.yaml"); })
                .find("p.yaml: missing key 'made_for.world'"),
            std::string::npos);
}

// Coupled layers of a decoupled model: 2 syncs each (TP), and segments of decoupled layers end
// before them; their weights and cache are the rank's sub-blocks' columns, with one set of norms.
TEST(Plan, CoupledLayersSyncTwiceAndEndSegments) {
  ModelConfig d = decoupled(4);
  const PlanLimits limits{"generate", 1024, 16, 64};
  const Plan plain = make_plan(d, limits, 2, ReplicaSplit::Block, 2, 1, {}, {}, "job.yaml");
  d.bp.coupled = {0, 15, 29};
  const Plan p = make_plan(d, limits, 2, ReplicaSplit::Block, 2, 1, {}, {}, "job.yaml");
  // coupled 0 | 1-2 ... 13-14 (7 merges) | coupled 15 | 16-17 ... 26-27 (6) | 28 (1) | coupled 29
  EXPECT_EQ(p.syncs_per_pass(d), 3 * 2 + 7 + 6 + 1);
  EXPECT_EQ(p.syncs_in_layer(0, d), 2);
  EXPECT_EQ(p.syncs_in_layer(14, d), 1);
  EXPECT_EQ(p.syncs_in_layer(16, d), 0);
  EXPECT_EQ(p.syncs_in_layer(28, d), 1);
  EXPECT_NE(p.to_yaml(d).find("syncs_per_layer: [2, 0, 1, 0, 1"), std::string::npos) << p.to_yaml(d);
  // Rank 0 holds sub-blocks 0 and 1: in a coupled layer, heads [0, 6), kv heads [0, 2), FFN [0, 768).
  const LayerShare tp = p.shares[0].coupled_share(d);
  EXPECT_TRUE(tp.heads.begin == 0 && tp.heads.count == 6 && tp.kv_heads.count == 2 && tp.ffn.count == 768);
  const LayerShare tp1 = p.shares[1].coupled_share(d);
  EXPECT_TRUE(tp1.heads.begin == 6 && tp1.kv_heads.begin == 2 && tp1.ffn.begin == 768 && tp1.ffn.count == 768);
  EXPECT_EQ(p.memory[0].kv_cache, plain.memory[0].kv_cache);
  EXPECT_EQ(plain.memory[0].weights - p.memory[0].weights, int64_t(4) * 3 * 2 * 576);  // one RMSNorm pair, not two
}

TEST(Plan, MemoryFollowsTheShare) {
  const ModelConfig m = smollm2();
  const PlanLimits limits{"generate", 2048, 32, 32};
  const RankMemory whole = rank_memory(m, LayerShare::whole(m), limits);
  // SmolLM2-135M: 134.5M parameters in fp32.
  EXPECT_NEAR(whole.weights / 4.0 / 1e6, 134.5, 0.5);
  const auto shares = tensor_shares(m, {1, 1});
  const RankMemory half = rank_memory(m, shares[0], limits);
  EXPECT_LT(half.weights, whole.weights);
  EXPECT_GT(half.weights, whole.weights / 2 - int64_t(4) * 30 * 576 * 1536);  // the embedding stays whole
  EXPECT_EQ(whole.kv_cache, int64_t(4) * 30 * (2048 + 32 * 32) * 2 * 192);
}

// weights.dtype bf16: the matrices take 2 bytes a value, the norm weights (30 x 2 x 576 + 576) stay 4;
// the KV cache is fp32 either way. A plan's limits carry the dtype through plan.yaml.
TEST(Plan, MemoryFollowsTheWeightsDtype) {
  const ModelConfig m = smollm2();
  PlanLimits limits{"generate", 2048, 32, 32};
  const RankMemory fp32 = rank_memory(m, LayerShare::whole(m), limits);
  limits.weights = WeightsDType::BF16;
  const RankMemory bf16 = rank_memory(m, LayerShare::whole(m), limits);
  const int64_t norms = 30 * 2 * 576 + 576;
  EXPECT_EQ(m.vector_parameter_count(), norms);
  EXPECT_EQ(bf16.weights, 2 * (m.parameter_count() - norms) + 4 * norms);
  EXPECT_EQ(fp32.weights, 4 * m.parameter_count());
  EXPECT_EQ(bf16.kv_cache, fp32.kv_cache);
}

namespace {

Profile uniform_profile(int world, double link_latency, double link_bytes_per_s, std::vector<double> slow = {}) {
  Profile p;
  p.world = world;
  p.prefill_rows = 512;
  p.decode_rows = 32;
  for (int r = 0; r < world; ++r) {
    RankProfile rp;
    rp.rank = r;
    const double f = slow.empty() ? 1.0 : slow[r];
    rp.layers = {100 * f, 8 * f, 60 * f};
    rp.head = {100 * f, 8 * f, 60 * f};
    rp.read_bytes_per_s = 20e9 * f;
    rp.usable_memory_bytes = int64_t(8) << 30;
    p.ranks.push_back(rp);
  }
  for (int g = 2; g <= world; ++g) {
    if (world % g) continue;
    for (int i = 0; i < world / g; ++i) {
      AllReduceLink l;
      for (int r = 0; r < g; ++r) l.ranks.push_back(i * g + r);
      l.link = {link_latency, link_bytes_per_s};
      p.all_reduce.push_back(l);
    }
  }
  return p;
}

JobConfig job(const std::string& objective) {
  JobConfig j;
  j.path = "job.yaml";
  j.task = "generate";
  j.input = "/nonexistent.h5";
  j.plan.objective = objective;
  return j;
}

}  // namespace

// parallel.sync_dtype: stored in plan.yaml (fp32 when left out), refused by name when unknown, and
// the cost model counts a compressed sync's bytes.
TEST(Plan, SyncDtypeRoundTripsAndShrinksPredictedBytes) {
  const ModelConfig m = smollm2();
  Plan p = make_plan(m, {"generate", 1024, 16, 64}, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  const std::string fp32_yaml = p.to_yaml(m);
  EXPECT_NE(fp32_yaml.find("sync_dtype: fp32"), std::string::npos);
  p.sync_dtype = SyncDType::Q8;
  Plan q = Plan::parse(p.to_yaml(m), "plan.yaml");
  EXPECT_EQ(q.sync_dtype, SyncDType::Q8);
  EXPECT_NE(p.describe().find("syncs in q8"), std::string::npos) << p.describe();
  std::string without = fp32_yaml;
  without.erase(without.find("sync_dtype: fp32\n"), std::string("sync_dtype: fp32\n").size());
  EXPECT_EQ(Plan::parse(without, "p.yaml").sync_dtype, SyncDType::F32);
  std::string bad = fp32_yaml;
  bad.replace(bad.find("sync_dtype: fp32"), 16, "sync_dtype: int4");
  EXPECT_NE(refusal([&] { Plan::parse(bad, "p.yaml"); }).find("p.yaml: key 'sync_dtype' is 'int4'"), std::string::npos);

  const Profile slow = uniform_profile(2, 1e-3, 12e6);
  Plan f = make_plan(m, {"generate", 1024, 16, 64}, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  const Prediction exact = predict(f, m, slow, {128, 32, 32});
  f.sync_dtype = SyncDType::BF16;
  const Prediction bf16 = predict(f, m, slow, {128, 32, 32});
  f.sync_dtype = SyncDType::Q8;
  const Prediction q8 = predict(f, m, slow, {128, 32, 32});
  EXPECT_DOUBLE_EQ(bf16.bytes_per_token * 2, exact.bytes_per_token);
  EXPECT_DOUBLE_EQ(q8.bytes_per_token * 128 / 39, exact.bytes_per_token);  // 39 bytes per 32 values
  EXPECT_LT(q8.decode_step_s, bf16.decode_step_s);
  EXPECT_LT(bf16.decode_step_s, exact.decode_step_s);
}

// With a calibration that measured compressed syncs, the planner offers them within the job's
// budget (and only then) and, on a link where tp wins latency but bytes still cost, picks the
// smallest payload.
TEST(Planner, CompressedSyncsFromACalibrationWithinTheBudget) {
  const ModelConfig m = smollm2();
  Calibration cal;
  cal.model = "m";
  cal.tp = 2;
  for (int l = 0; l < 30; ++l) {
    cal.layers.push_back({l, 1.0, 0.5});  // every drop far outside the budget
    cal.order.push_back(l);
    cal.prefix.push_back({0, 1.0 + l, 0.5});
  }
  cal.max_kl = 0.05;
  cal.min_top1 = 0.9;
  cal.sync_dtypes = {{0, 1e-6, 1.0}, {0, 1e-3, 0.99}};
  const std::string path = (std::filesystem::temp_directory_path() / "lowsync_cal_sync.yaml").string();
  cal.save(path);
  JobConfig j = job("latency");
  j.parallel.spd.from = path;
  j.parallel.auto_plan = true;
  const Profile slow = uniform_profile(2, 2e-5, 100e6);  // tp wins latency; the payload still costs
  const auto r = plan_candidates(j, m, slow, {128, 32, 32});
  int compressed = 0;
  for (const Candidate& c : r.candidates)
    if (c.plan.sync_dtype != SyncDType::F32) {
      ++compressed;
      EXPECT_EQ(c.plan.group, 2) << c.label;
      EXPECT_EQ(c.plan.dropped_layers(), 0) << c.label;
    }
  EXPECT_EQ(compressed, 2);  // bf16 and q8 for tp=2 (equal ranks: one share set; no drop set fits)
  const Candidate& best = r.candidates[r.chosen];
  EXPECT_EQ(best.plan.sync_dtype, SyncDType::Q8) << best.label;
  EXPECT_DOUBLE_EQ(best.kl, 1e-3);
  j.parallel.spd.min_top1 = 0.995;  // q8 now outside the budget
  const auto t = plan_candidates(j, m, slow, {128, 32, 32});
  for (const Candidate& c : t.candidates) EXPECT_NE(c.plan.sync_dtype, SyncDType::Q8) << c.label;
  std::filesystem::remove(path);
}

// memory.limit: candidates stream the layers beyond it, the cost model charges the copies, and a
// limit below every plan's floor is refused naming the key.
TEST(Planner, PlansWithMemoryLimit) {
  const ModelConfig m = smollm2();
  const Profile p = uniform_profile(2, 5e-6, 10e9);
  const auto free = plan_candidates(job("throughput"), m, p, {128, 32, 32});
  const int64_t one_rank = free.candidates[0].plan.memory_of(0).total();
  // The tightest limit, in tenths of one rank's need, that some plan still fits by streaming.
  int64_t limit = 0;
  for (int tenths = 1; tenths < 10 && limit == 0; ++tenths) {
    try {
      plan_candidates(job("throughput"), m, p, {128, 32, 32}, one_rank * tenths / 10);
      limit = one_rank * tenths / 10;
    } catch (const UserError&) {
    }
  }
  ASSERT_GT(limit, 0);
  const auto tight = plan_candidates(job("throughput"), m, p, {128, 32, 32}, limit);
  bool streams = false;
  for (const Candidate& c : tight.candidates)
    for (int w = 0; w < 2; ++w) {
      EXPECT_LE(c.plan.memory_of(w).total(), limit) << c.label;
      if (c.plan.resident_of(w) < c.plan.layers_of(w).count) streams = true;
    }
  EXPECT_TRUE(streams);
  // The same grid streaming is predicted no faster than holding every layer, and slower where the
  // copies cannot hide behind compute (a grid that streams most of its layers, one sequence's decode
  // step reading each weight once).
  bool slower = false;
  for (const Candidate& c : tight.candidates)
    for (const Candidate& f : free.candidates)
      if (c.label == f.label && c.plan.resident_of(0) < c.plan.layers_of(0).count) {
        EXPECT_GE(c.predicted.decode_step_s, f.predicted.decode_step_s) << c.label;
        EXPECT_GE(c.predicted.decode_step_one_s, f.predicted.decode_step_one_s) << c.label;
        slower = slower || c.predicted.decode_step_one_s > f.predicted.decode_step_one_s;
      }
  EXPECT_TRUE(slower);
  EXPECT_NE(refusal([&] { plan_candidates(job("throughput"), m, p, {128, 32, 32}, 1 << 20); }).find("memory.limit of 1 MiB"),
            std::string::npos);
}

TEST(Planner, ReplicasForThroughputTensorForLatencyOnAFastLink) {
  const ModelConfig m = smollm2();
  const Profile fast = uniform_profile(2, 5e-6, 10e9);
  const auto t = plan_candidates(job("throughput"), m, fast, {128, 32, 32});
  EXPECT_EQ(t.candidates[t.chosen].plan.dp, 2);
  const auto l = plan_candidates(job("latency"), m, fast, {128, 32, 32});
  EXPECT_EQ(l.candidates[l.chosen].plan.group, 2);
  // A 100 Mbit/s link with millisecond latency: 60 syncs per token cost more than half the compute saves.
  const Profile slow = uniform_profile(2, 1e-3, 12e6);
  const auto s = plan_candidates(job("latency"), m, slow, {128, 32, 32});
  EXPECT_EQ(s.candidates[s.chosen].plan.group, 1);
}

TEST(Planner, UnequalRanksGetProportionalShares) {
  const ModelConfig m = smollm2();
  const Profile p = uniform_profile(2, 5e-6, 10e9, {1.0, 0.5});
  const auto r = plan_candidates(job("latency"), m, p, {128, 32, 32});
  const Candidate& c = r.candidates[r.chosen];
  EXPECT_EQ(c.plan.group, 2);
  EXPECT_NE(c.label.find("speed-proportional"), std::string::npos) << planner_table(r, job("latency"), m);
  EXPECT_GT(share_layer_parameters(m, c.plan.shares[0]), 1.6 * share_layer_parameters(m, c.plan.shares[1]));
}

TEST(Planner, RefusesAJobThatFitsNowhereWithTheNumbers) {
  const ModelConfig m = smollm2();
  Profile p = uniform_profile(2, 5e-6, 10e9);
  for (auto& r : p.ranks) r.usable_memory_bytes = 64 << 20;
  const std::string why = refusal([&] { plan_candidates(job("throughput"), m, p, {128, 32, 32}); });
  EXPECT_NE(why.find("fits on no plan of 2 ranks"), std::string::npos) << why;
  EXPECT_NE(why.find("64 MiB usable"), std::string::npos) << why;
}

TEST(Plan, AutoReplicasFillTheWorld) {
  JobConfig job;
  job.path = "job.yaml", job.task = "generate";
  job.parallel.tp = 3, job.parallel.dp = 0;  // parallel: {tp: 3, dp: auto}
  const Plan p = plan_from_job(job, smollm2(), 6);
  EXPECT_EQ(p.dp, 2);
  EXPECT_EQ(p.group, 3);
  job.parallel.tp = 1;
  EXPECT_EQ(plan_from_job(job, smollm2(), 5).dp, 5);
  job.parallel.tp = 2;
  EXPECT_NE(refusal([&] { plan_from_job(job, smollm2(), 5); })
                .find("parallel.dp: auto needs a rank count that is a multiple of parallel.tp = 2, but mpirun started 5"),
            std::string::npos);
}

TEST(Planner, PipelineWhenAReplicaDoesNotFitAndTheLinkIsSlow) {
  const ModelConfig m = smollm2();
  Profile p = uniform_profile(2, 1e-3, 12e6);  // 100 Mbit/s with a millisecond of latency
  for (auto& r : p.ranks) r.usable_memory_bytes = 600ll << 20;  // a whole replica (~540 MB of weights + cache) fits on no rank
  PointToPointLink l;
  l.from = 0, l.to = 1, l.link = {1e-3, 12e6};
  p.point_to_point.push_back(l);
  const auto r = plan_candidates(job("throughput"), m, p, {128, 32, 32});
  const Candidate& c = r.candidates[r.chosen];
  EXPECT_EQ(c.plan.pp, 2) << planner_table(r, job("throughput"), m);
  bool replicas_refused = false;
  for (const Candidate& k : r.candidates)
    if (k.plan.dp == 2) replicas_refused = !k.fits;
  EXPECT_TRUE(replicas_refused);
  // The pipeline's stages hold half the layers each: memory well under a whole replica's.
  EXPECT_LT(c.plan.memory_of(0).weights, rank_memory(m, LayerShare::whole(m), c.plan.limits).weights * 0.7);
}

// parallel.split_head: the head's vocabulary rows partition it in whole 16-row blocks (the last
// rank takes the ragged end), in proportion to speed; plan.yaml keeps them; a tied head split on
// the first stage costs no memory (a view of the embedding the lookup holds whole), an untied one
// shrinks; wrong rows are refused by name.
TEST(Plan, SplitHeadRowsYamlAndMemory) {
  ModelConfig m = smollm2();
  m.vocab = 203;
  const std::vector<Span> even = head_shares(m, {1, 1, 1});
  ASSERT_EQ(even.size(), 3u);
  EXPECT_EQ(even[0].begin, 0);
  for (size_t r = 1; r < even.size(); ++r) EXPECT_EQ(even[r].begin, even[r - 1].end());
  EXPECT_EQ(even[2].end(), 203);
  for (const Span& s : even) EXPECT_EQ(s.begin % kFfnGrain, 0);
  EXPECT_EQ(even[0].count, 80);  // 13 blocks of 16: 5 + 4 + 4, the last ragged (59 rows)
  EXPECT_NO_THROW(check_head_shares(m, 3, even, "test"));
  const std::vector<Span> fast = head_shares(m, {2, 1});
  EXPECT_NEAR(fast[0].count / 203.0, 2.0 / 3.0, 0.05);
  m.vocab = 5;  // fewer rows than 16 per rank: single rows
  EXPECT_EQ(head_shares(m, {1, 1, 1})[2].count, 1);
  m.vocab = 2;
  EXPECT_NE(refusal([&] { head_shares(m, {1, 1, 1}); }).find("cannot be split over 3 ranks"), std::string::npos);

  const ModelConfig s = smollm2();
  const PlanLimits limits{"generate", 1024, 16, 64};
  const Plan p = make_plan(s, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {}, 0, true);
  ASSERT_EQ(p.head.size(), 2u);
  EXPECT_EQ(p.head[1].begin, 24576);
  EXPECT_EQ(p.head_of(1, s.vocab).count, 24576);
  EXPECT_NE(p.describe().find("head rows 24576+24576"), std::string::npos) << p.describe();
  Plan q = Plan::parse(p.to_yaml(s), "plan.yaml");
  complete_parsed_plan(q, s, 2, "plan.yaml");
  EXPECT_EQ(q.to_yaml(s), p.to_yaml(s));
  ASSERT_EQ(q.head.size(), 2u);
  const Plan whole = make_plan(s, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  EXPECT_TRUE(whole.head.empty());
  EXPECT_EQ(whole.to_yaml(s).find("\nhead:"), std::string::npos);
  EXPECT_EQ(p.memory[0].weights, whole.memory[0].weights);  // tied: a view of the whole embedding
  ModelConfig untied = s;
  untied.tied_embeddings = false;
  const Plan u = make_plan(untied, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {}, 0, true);
  const Plan uw = make_plan(untied, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  EXPECT_EQ(uw.memory[0].weights - u.memory[0].weights, int64_t(4) * 24576 * 576);
  // A pipeline's last stage holds only its rows of a tied head.
  const Plan pp = make_plan(s, limits, 4, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {2, {}, 0}, 0, true);
  const Plan ppw = make_plan(s, limits, 4, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {2, {}, 0});
  EXPECT_EQ(ppw.memory[2].weights - pp.memory[2].weights, int64_t(4) * 24576 * 576);

  std::string gap = p.to_yaml(s);
  gap.replace(gap.find("[24576, 24576]"), 14, "[24577, 24575]");
  Plan g = Plan::parse(gap, "p.yaml");
  EXPECT_NE(refusal([&] { complete_parsed_plan(g, s, 2, "p.yaml"); }).find("p.yaml: rank 1: head rows [24577, 49152)"),
            std::string::npos);
  std::string three = p.to_yaml(s);
  three.replace(three.find("head: [[0, 24576], [24576, 24576]]"), 34, "head: [[0, 24576]]");
  EXPECT_NE(refusal([&] { Plan::parse(three, "p.yaml"); }).find("'head' must list 2"), std::string::npos);
  ModelConfig bert = s;
  bert.family = Family::Bert;
  bert.architecture = "BertModel";
  EXPECT_NE(refusal([&] { check_head_shares(bert, 2, p.head, "p.yaml"); }).find("has no output head"), std::string::npos);
}

// The cost model weighs a split head's merge against the head's compute: on a fast link the split
// decodes faster (SmolLM2's head is a fifth of its weights) and split_head: auto picks it; on a
// 100 Mbit/s link, gathering whole rows for sampling (98 KB a row) costs more than the head's half.
TEST(Planner, SplitHeadWeighedByTheCostModel) {
  const ModelConfig m = smollm2();
  const PlanLimits limits{"generate", 1024, 16, 64};
  const Plan whole = make_plan(m, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  const Plan split = make_plan(m, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {}, 0, true);
  const Profile fast = uniform_profile(2, 5e-6, 10e9);
  Workload greedy{128, 1, 32};
  const Prediction w = predict(whole, m, fast, greedy), s = predict(split, m, fast, greedy);
  EXPECT_LT(s.decode_step_one_s, w.decode_step_one_s);
  EXPECT_DOUBLE_EQ(s.bytes_per_token - w.bytes_per_token, 40);  // one summary per new token

  JobConfig j = job("latency");
  j.parallel.split_head = SplitHead::Auto;
  const auto r = plan_candidates(j, m, fast, greedy);
  const Candidate& chosen = r.candidates[r.chosen];
  EXPECT_TRUE(chosen.plan.head_split()) << chosen.label;
  EXPECT_NE(chosen.label.find("head split"), std::string::npos);
  int split_candidates = 0;
  for (const Candidate& c : r.candidates) split_candidates += c.plan.head_split();
  EXPECT_EQ(split_candidates, 1);  // tp=2; dp=2 and one rank have no group to split over
  j.parallel.split_head = SplitHead::Off;
  for (const Candidate& c : plan_candidates(j, m, fast, greedy).candidates) EXPECT_FALSE(c.plan.head_split());

  const Profile slow = uniform_profile(2, 1e-3, 12e6);
  Workload sampling = greedy;
  sampling.gather_rows = true;
  EXPECT_GT(predict(split, m, slow, sampling).decode_step_one_s, predict(whole, m, slow, sampling).decode_step_one_s);
}

// A checkpoint recovered for SPD (config.json 'lowsync_spd') is planned only as it was recovered:
// every candidate has its tp, its shares and its drop set (never a plan the loader would refuse),
// and a rank count that cannot hold its tp group is refused naming the checkpoint.
TEST(Planner, RecoveredSpdCheckpointOnlyAsRecovered) {
  ModelConfig m = smollm2();
  m.spd_checkpoint.tp = 3;
  m.spd_checkpoint.drop = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  m.spd_checkpoint.heads = {3, 3, 3};
  m.spd_checkpoint.ffn = {512, 512, 512};
  for (const int world : {3, 6}) {
    const Profile p = uniform_profile(world, 5e-6, 10e9, world == 3 ? std::vector<double>{1.0, 0.5, 1.0} : std::vector<double>{});
    for (const std::string objective : {"throughput", "latency"}) {
      const auto r = plan_candidates(job(objective), m, p, {128, 32, 32});
      ASSERT_FALSE(r.candidates.empty());
      for (const Candidate& c : r.candidates) {
        EXPECT_EQ(c.plan.group, 3) << c.label;
        EXPECT_EQ(c.plan.dp, world / 3) << c.label;
        EXPECT_EQ(c.plan.dropped_layers(), 15) << c.label;
        for (const LayerShare& s : c.plan.shares) {
          EXPECT_EQ(s.heads.count, 3) << c.label;
          EXPECT_EQ(s.ffn.count, 512) << c.label;
        }
        EXPECT_TRUE(std::isnan(c.kl)) << c.label;
      }
    }
  }
  const std::string why = refusal([&] { plan_candidates(job("throughput"), m, uniform_profile(4, 5e-6, 10e9), {128, 32, 32}); });
  EXPECT_NE(why.find("recovered for Sync-Point Drop at tp = 3"), std::string::npos) << why;
  EXPECT_NE(why.find("no plan of 4 ranks"), std::string::npos) << why;
}

// memory.pool: peer. With rank 0's limit below its share and rank 1's with room, rank 1 holds
// rank 0's streamed layers (counted in its memory); plan.yaml keeps the limits, the pool and the
// holders; limits that leave no rank room are refused with each rank's spare memory; the cost model
// charges each fetched layer to the link between the two ranks.
TEST(Plan, PeerPoolHoldsOverflowWhereThereIsRoom) {
  const ModelConfig m = smollm2();
  const PlanLimits limits{"generate", 1024, 16, 64};
  const Plan whole = make_plan(m, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml");
  const int64_t need = whole.memory_of(0).total();
  MemoryBudget budget;
  budget.rank_limits = {need * 3 / 4, 4 * need};
  budget.pool = MemoryPool::Peer;
  const Plan p = make_plan(m, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {}, budget);
  ASSERT_LT(p.resident_of(0), m.n_layers);
  EXPECT_EQ(p.resident_of(1), m.n_layers);
  EXPECT_EQ(p.holder_of(0), 1);
  EXPECT_EQ(p.holder_of(1), -1);
  EXPECT_LE(p.memory_of(0).total(), need * 3 / 4);
  const int64_t layer = (whole.memory_of(0).weights - rank_memory(m, p.shares[0], limits, {0, 0}, true, true).weights) /
                        m.n_layers;
  EXPECT_EQ(p.memory_of(1).pooled, (m.n_layers - p.resident_of(0)) * layer);
  EXPECT_LE(p.memory_of(1).total(), 4 * need);
  const Plan back = Plan::parse(p.to_yaml(m), "plan.yaml");
  EXPECT_EQ(back.memory_budget.rank_limits, budget.rank_limits);
  EXPECT_EQ(back.memory_budget.pool, MemoryPool::Peer);
  Plan completed = back;
  complete_parsed_plan(completed, m, 2, "plan.yaml");
  EXPECT_EQ(completed.pool_holder, p.pool_holder);
  EXPECT_EQ(completed.resident_layers, p.resident_layers);

  MemoryBudget tight = budget;
  tight.rank_limits = {need * 3 / 4, need * 3 / 4};
  const std::string why = refusal([&] { make_plan(m, limits, 2, ReplicaSplit::Tensor, 2, 1, {}, {}, "job.yaml", {}, tight); });
  EXPECT_NE(why.find("memory.pool: peer: rank 0"), std::string::npos) << why;
  EXPECT_NE(why.find("rank 1 0 MiB"), std::string::npos) << why;

  // The same plan over a fast and a slow link between the ranks: fetching costs the slow one more.
  Profile fast = uniform_profile(2, 5e-6, 10e9), slow = fast;
  fast.point_to_point.push_back({0, 1, {5e-6, 10e9}, {}});
  slow.point_to_point.push_back({0, 1, {1e-3, 12e6}, {}});
  EXPECT_GT(predict(p, m, slow, {128, 32, 32}).decode_step_one_s, predict(p, m, fast, {128, 32, 32}).decode_step_one_s);
}
