// parallel.decoupled.from: the planner trades a decoupled checkpoint's coupled layers (accuracy)
// against its syncs (speed). Worked by hand on a 4-layer model at 2 ranks, latency objective, on
// slow ranks joined by a link of 2 ms per sync (so that splitting a layer pays and each sync costs):
//   tp=2:                                  2 x 4 = 8 syncs per pass, exact
//   c3 (P=2 k=1, coupled [0, 1, 2]):       2 x 3 + 1 = 7 syncs, KL 0.01
//   c0 (P=2 k=1, no coupled layer):        4 segments = 4 syncs, KL 0.5
// Equal compute per rank in all three, so the fewer syncs the faster: c0 within the budget, else c3,
// else tp=2. A sync of one token sends hidden x 4 bytes = 256 B, so B/token is 4, 7 and 8 x 256.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <vector>

#include "io/error.h"
#include "planning/decoupled_candidates.h"
#include "planning/planner.h"
#include "tests/unit/user_error_text.h"

using namespace lowsync;
namespace fs = std::filesystem;

namespace {

const char* kBaseConfig = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
 "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
 "vocab_size": 257, "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": false)";

// Directories made by the tests, removed when the test program ends.
struct TempRoots {
  std::vector<fs::path> roots;
  ~TempRoots() {
    std::error_code ec;
    for (const fs::path& r : roots) fs::remove_all(r, ec);
  }
} temp_roots;

fs::path fresh_dir(const std::string& name) {
  static int n = 0;
  const fs::path root = fs::temp_directory_path() / ("lowsync_dc_" + std::to_string(::getpid()) + "_" + std::to_string(n++));
  temp_roots.roots.push_back(root);
  fs::create_directories(root / name);
  return root / name;
}

void write(const fs::path& path, const std::string& text) { std::ofstream(path) << text; }

// A base model directory (config.json only: the planner reads no weights).
std::string base_model(const std::string& extra = "") {
  const fs::path d = fresh_dir("base");
  write(d / "config.json", std::string(kBaseConfig) + extra + "}");
  return d.string();
}

// A decoupled checkpoint of the base: P = 2 sub-blocks of 4 heads, merged every layer, `coupled`
// kept; its fidelity.yaml with `kl` against `base` (skipped when kl < 0).
std::string checkpoint(const std::string& name, const std::string& coupled, double kl, const ModelConfig& base,
                       const std::string& digest = "") {
  const fs::path d = fresh_dir(name);
  std::string cfg = kBaseConfig;
  cfg.replace(cfg.find("[\"LlamaForCausalLM\"]"), 20, "[\"LowsyncDecoupledLlamaForCausalLM\"]");
  write(d / "config.json", cfg + R"(, "bp": {"sub_blocks": 2, "sync_every": 1, "base_architecture": "LlamaForCausalLM",
   "heads": [4, 4], "kv_heads": [2, 2], "ffn": [64, 64], "coupled": [)" + coupled + "]}}");
  if (kl >= 0)
    write(d / "fidelity.yaml", "lowsync_fidelity: 1\nbase: {path: " + base.dir + ", config_digest: " +
                                   (digest.empty() ? config_digest(base) : digest) + "}\nmetric: mean_kl\nmean_kl: " +
                                   std::to_string(kl) + "\ntop1_agreement: 0.9\nrows: 8\ntokens: 400\ntexts: test\n");
  return d.string();
}

// Two equal slow ranks (so that halving a layer's compute pays), 2 ms per sync.
Profile slow_ranks_fast_link() {
  Profile p;
  p.world = 2, p.prefill_rows = 512, p.decode_rows = 32;
  for (int r = 0; r < 2; ++r) {
    RankProfile rp;
    rp.rank = r;
    rp.layers = rp.head = {0.1, 0.01, 0.05};  // GFLOP/s
    rp.read_bytes_per_s = 20e9;
    rp.usable_memory_bytes = int64_t(8) << 30;
    p.ranks.push_back(rp);
  }
  AllReduceLink l;
  l.ranks = {0, 1};
  l.link = {2e-3, 1e9};  // 2 ms a sync: a few percent of a pass each
  p.all_reduce.push_back(l);
  return p;
}

JobConfig auto_job(const std::vector<std::string>& from, double max_kl) {
  JobConfig j;
  j.path = "job.yaml";
  j.task = "generate";
  j.input = "/nonexistent.h5";
  j.plan.objective = "latency";
  j.parallel.auto_plan = true;
  j.parallel.decoupled.from = from;
  j.parallel.decoupled.max_kl = max_kl;
  return j;
}

const Candidate* find(const PlannerResult& r, const std::string& model_dir, const std::string& split, int group) {
  for (const Candidate& c : r.candidates)
    if (c.plan.model == model_dir && split_name(c.plan.split) == split && c.plan.group == group) return &c;
  return nullptr;
}

}  // namespace

TEST(DecoupledCandidates, TheFastestWithinTheBudgetWins) {
  const ModelConfig base = load_model_config(base_model());
  const std::string c0 = checkpoint("c0", "", 0.5, base), c3 = checkpoint("c3", "0, 1, 2", 0.01, base);
  const Profile p = slow_ranks_fast_link();
  const Workload w{16, 8, 1};

  // Both within: c0 (4 syncs) beats c3 (7) and tp (8).
  const PlannerResult loose = plan_candidates(auto_job({c0, c3}, 0.6), base, p, w);
  const Candidate* tp = find(loose, base.dir, "tp", 2);
  const Candidate* b0 = find(loose, c0, "bp", 2);
  const Candidate* b3 = find(loose, c3, "bp", 2);
  ASSERT_TRUE(tp && b0 && b3) << planner_table(loose, auto_job({}, -1), base);
  EXPECT_EQ(tp->predicted.bytes_per_token, 8 * 256);
  EXPECT_EQ(b3->predicted.bytes_per_token, 7 * 256);
  EXPECT_EQ(b0->predicted.bytes_per_token, 4 * 256);
  EXPECT_LT(b0->predicted.sequence_latency_s, b3->predicted.sequence_latency_s);
  EXPECT_LT(b3->predicted.sequence_latency_s, tp->predicted.sequence_latency_s);
  EXPECT_DOUBLE_EQ(b0->kl, 0.5);
  EXPECT_TRUE(std::isnan(b0->cosine));
  for (const Candidate& c : loose.candidates)  // one rank over every sub-block would be the base's dp, less exact
    if (c.checkpoint >= 0) EXPECT_GT(c.plan.group, 1) << c.label;
  const Candidate& best = loose.candidates[loose.chosen];
  EXPECT_EQ(best.plan.model, c0) << planner_table(loose, auto_job({}, -1), base);
  EXPECT_EQ(loose.model_of(best, base).dir, c0);
  EXPECT_EQ(model_of_plan(best.plan, auto_job({c0, c3}, 0.6), base).bp.coupled.size(), 0u);
  EXPECT_NE(best.plan.chosen_by.find("runs the decoupled checkpoint " + c0), std::string::npos) << best.plan.chosen_by;
  EXPECT_TRUE(loose.refused.empty());

  // A tighter budget refuses c0 (listed with its fidelity) and picks the more coupled c3.
  const JobConfig tighter = auto_job({c0, c3}, 0.1);
  const PlannerResult mid = plan_candidates(tighter, base, p, w);
  EXPECT_EQ(mid.candidates[mid.chosen].plan.model, c3);
  ASSERT_EQ(mid.refused.size(), 1u);
  EXPECT_NE(mid.refused[0].find(c0 + " (P=2 k=1 coupled 0/4, 4 syncs): mean KL 0.5"), std::string::npos) << mid.refused[0];
  EXPECT_NE(mid.refused[0].find("> budget.max_kl 0.1"), std::string::npos) << mid.refused[0];
  EXPECT_NE(planner_table(mid, tighter, base).find("refused (parallel.decoupled.budget): " + c0), std::string::npos);
  EXPECT_EQ(model_of_plan(mid.candidates[mid.chosen].plan, tighter, base).bp.coupled, (std::vector<int>{0, 1, 2}));

  // Tighter still: neither; the base model's tensor parallelism.
  const PlannerResult tight = plan_candidates(auto_job({c0, c3}, 0.001), base, p, w);
  EXPECT_EQ(tight.candidates[tight.chosen].plan.model, base.dir);
  EXPECT_EQ(tight.candidates[tight.chosen].plan.split, ReplicaSplit::Tensor);
  EXPECT_EQ(tight.candidates[tight.chosen].plan.group, 2);
  EXPECT_EQ(tight.refused.size(), 2u);
}

TEST(DecoupledCandidates, EveryRefusalNamesTheDirectoryAndWhatWasExpected) {
  const ModelConfig base = load_model_config(base_model());
  const Profile p = slow_ranks_fast_link();
  const Workload w{16, 8, 1};
  auto why = [&](const std::vector<std::string>& from, double max_kl) {
    return refusal([&] { plan_candidates(auto_job(from, max_kl), base, p, w); });
  };
  // Measured against another model.
  const std::string other = checkpoint("other", "", 0.01, base, "0123456789abcdef");
  EXPECT_NE(why({other}, 0.1).find(other + "/fidelity.yaml: measured against " + base.dir +
                                   " (config digest 0123456789abcdef), not the job's model"),
            std::string::npos)
      << why({other}, 0.1);
  // No fidelity file while a budget is set; without a budget it is a candidate of unknown fidelity.
  const std::string bare = checkpoint("bare", "", -1, base);
  EXPECT_NE(why({bare}, 0.1).find("job.yaml: parallel.decoupled.from: " + bare + " has no fidelity.yaml"),
            std::string::npos)
      << why({bare}, 0.1);
  const PlannerResult unbudgeted = plan_candidates(auto_job({bare}, -1), base, p, w);
  EXPECT_TRUE(std::isnan(unbudgeted.candidates[unbudgeted.chosen].kl));
  // Not decoupled; made from a model that differs only in rope_theta; an encoder's budget for a decoder.
  const std::string plain = base_model();
  EXPECT_NE(why({plain}, -1).find(plain + " is not a decoupled checkpoint"), std::string::npos) << why({plain}, -1);
  const ModelConfig wider = load_model_config(base_model(R"(, "rope_theta": 5e5)"));
  EXPECT_NE(refusal([&] { plan_candidates(auto_job({checkpoint("c", "", 0.01, wider)}, 0.1), base, p, w); })
                .find("measured against"),
            std::string::npos);
  JobConfig cosine = auto_job({checkpoint("c", "", 0.01, base)}, -1);
  cosine.parallel.decoupled.min_cosine = 0.98;
  EXPECT_NE(refusal([&] { plan_candidates(cosine, base, p, w); }).find("has no mean_cosine"), std::string::npos);
  // A broken fidelity file.
  const std::string broken = checkpoint("broken", "", -1, base);
  write(fs::path(broken) / "fidelity.yaml", "metric: [\n");
  EXPECT_NE(why({broken}, 0.1).find(broken + "/fidelity.yaml: not valid YAML"), std::string::npos) << why({broken}, 0.1);
}

// The job keys: paths read from the job file's folder, stored in job_yaml and the fingerprint (the
// checkpoint chosen changes the results), and refused without a planner to choose.
TEST(DecoupledCandidates, JobKeys) {
  const fs::path dir = fresh_dir("job");
  const std::string head = "model: m\ntask: score\ninput: p.h5\noutput: o.h5\n";
  write(dir / "job.yaml", head + "parallel: {auto: true, decoupled: {from: [a, /abs/b], budget: {max_kl: 0.05}}}\n");
  const JobConfig a = load_job_config((dir / "job.yaml").string(), {});
  EXPECT_EQ(a.parallel.decoupled.from, (std::vector<std::string>{(dir / "a").string(), "/abs/b"}));
  EXPECT_DOUBLE_EQ(a.parallel.decoupled.max_kl, 0.05);
  EXPECT_LT(a.parallel.decoupled.min_cosine, 0);
  write(dir / "stored.yaml", a.to_yaml());
  const JobConfig b = load_job_config((dir / "stored.yaml").string(), {});
  EXPECT_EQ(b.parallel.decoupled.from, a.parallel.decoupled.from) << a.to_yaml();
  EXPECT_EQ(b.fingerprint(), a.fingerprint());
  EXPECT_NE(a.fingerprint(), load_job_config((dir / "job.yaml").string(), {"parallel.decoupled.budget.max_kl=0.1"})
                                 .fingerprint());
  write(dir / "manual.yaml", head + "parallel: {tp: 2, decoupled: {from: [a]}}\n");
  EXPECT_NE(refusal([&] { load_job_config((dir / "manual.yaml").string(), {}); })
                .find("key 'parallel.decoupled.from' lists checkpoints for the planner to choose from; set parallel: auto"),
            std::string::npos);
  write(dir / "budget.yaml", head + "parallel: {auto: true, decoupled: {budget: {min_cosine: 0.9}}}\n");
  EXPECT_NE(refusal([&] { load_job_config((dir / "budget.yaml").string(), {}); })
                .find("key 'parallel.decoupled.budget' is given without parallel.decoupled.from"),
            std::string::npos);
}
