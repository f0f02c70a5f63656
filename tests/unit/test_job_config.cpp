#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/error.h"
#include "io/job_config.h"

#include <yaml-cpp/yaml.h>

using namespace lowsync;

namespace {
std::string write_yaml(const std::string& text) {
  static int n = 0;
  auto path = std::filesystem::temp_directory_path() / ("lowsync_job_" + std::to_string(::getpid()) + "_" + std::to_string(n++) + ".yaml");
  std::ofstream(path) << text;
  return path.string();
}
const char* kBase = "model: m\ntask: generate\ninput: in.h5\noutput: out.h5\n";
}  // namespace

TEST(JobConfig, DefaultsAndNestedKeys) {
  auto c = load_job_config(write_yaml(std::string(kBase) + "generate: {max_new_tokens: 7, top_p: 0.5}\n"), {});
  EXPECT_EQ(c.generate.max_new_tokens, 7);
  EXPECT_FLOAT_EQ(c.generate.top_p, 0.5f);
  EXPECT_EQ(c.generate.top_k, 0);
  EXPECT_EQ(c.batch.max_sequences, 32);
}

TEST(JobConfig, SetOverridesAnyKey) {
  auto c = load_job_config(write_yaml(kBase), {"generate.seed=99", "task=score", "embed.normalize=true"});
  EXPECT_EQ(c.generate.seed, 99u);
  EXPECT_EQ(c.task, "score");
  EXPECT_TRUE(c.embed.normalize);
}

TEST(JobConfig, UnknownKeyIsNamed) {
  try {
    load_job_config(write_yaml(std::string(kBase) + "generate: {max_new_tokns: 3}\n"), {});
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'generate.max_new_tokns'"), std::string::npos) << e.what();
  }
}

TEST(JobConfig, WrongTypeAndBadValuesAreErrors) {
  EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + "threads: many\n"), {}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + "generate: {top_p: 0}\n"), {}), UserError);
  EXPECT_THROW(load_job_config(write_yaml("model: m\ntask: generate\ninput: in.h5\n"), {}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"bogus=1"}), UserError);
}

TEST(JobConfig, FingerprintIgnoresOutputAndSpeedKeys) {
  auto a = load_job_config(write_yaml(kBase), {});
  auto b = load_job_config(write_yaml(kBase), {"output=elsewhere.h5", "batch.max_tokens=17", "threads=2"});
  auto c = load_job_config(write_yaml(kBase), {"generate.max_new_tokens=5"});
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_NE(a.fingerprint(), c.fingerprint());
}

TEST(JobConfig, BackendAndCudaKeys) {
  auto c = load_job_config(write_yaml(kBase), {});
  EXPECT_EQ(c.backend, "cpu");
  EXPECT_EQ(c.cuda.device, "auto");
  EXPECT_EQ(c.cuda.device_index(), -1);
  EXPECT_EQ(c.cuda.dtype, "bf16");
  auto g = load_job_config(write_yaml(std::string(kBase) + "backend: cuda\ncuda: {device: 1, dtype: fp32}\n"), {});
  EXPECT_EQ(g.backend, "cuda");
  EXPECT_EQ(g.cuda.device_index(), 1);
  EXPECT_EQ(g.cuda.dtype, "fp32");
  auto s = load_job_config(write_yaml(kBase), {"backend=cuda", "cuda.dtype=fp16", "cuda.device=0"});
  EXPECT_EQ(s.backend, "cuda");
  EXPECT_EQ(s.cuda.device_index(), 0);
  EXPECT_EQ(s.cuda.dtype, "fp16");
  for (const char* bad : {"backend: gpu\n", "cuda: {dtype: fp8}\n", "cuda: {device: -1}\n", "cuda: {device: first}\n"})
    EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + bad), {}), UserError) << bad;
  try {
    load_job_config(write_yaml(std::string(kBase) + "cuda: {devices: 0}\n"), {});
    FAIL() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'cuda.devices'"), std::string::npos) << e.what();
  }
}

TEST(JobConfig, FingerprintHoldsBackendAndDtypeNotDevice) {
  auto cpu = load_job_config(write_yaml(kBase), {});
  auto cuda = load_job_config(write_yaml(kBase), {"backend=cuda"});
  auto fp32 = load_job_config(write_yaml(kBase), {"backend=cuda", "cuda.dtype=fp32"});
  auto other_gpu = load_job_config(write_yaml(kBase), {"backend=cuda", "cuda.device=1"});
  EXPECT_NE(cpu.fingerprint(), cuda.fingerprint());
  EXPECT_NE(cuda.fingerprint(), fp32.fingerprint());
  EXPECT_EQ(cuda.fingerprint(), other_gpu.fingerprint());
}

// Issue 14: malformed YAML gives one UserError naming the file, not a yaml-cpp exception.
TEST(JobConfig, MalformedYamlIsAUserError) {
  for (const char* text : {"{[model]: 1}\n", "generate:\n  ? [a, b]\n  : 1\n"}) {
    try {
      load_job_config(write_yaml(text), {});
      FAIL() << "no error for " << text;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("a key"), std::string::npos) << e.what();
    }
  }
  for (const char* set : {"parallel.spd.drop=[1, 2", "model={a", "model=a: b: c"}) {
    try {
      load_job_config(write_yaml(kBase), {set});
      FAIL() << "no error for --set " << set;
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("--set"), std::string::npos) << e.what();
    }
  }
  try {
    load_job_config(std::filesystem::temp_directory_path().string(), {});
    FAIL() << "no error for a directory";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
}

TEST(JobConfig, AutoThreadsAndReplicas) {
  auto c = load_job_config(write_yaml(std::string(kBase) + "threads: auto\nparallel: {tp: 2, dp: auto}\n"), {});
  EXPECT_EQ(c.threads, 0);      // resolved per rank by resolve_threads
  EXPECT_EQ(c.parallel.dp, 0);  // resolved by plan_from_job
  EXPECT_NE(c.to_yaml().find("threads: auto"), std::string::npos) << c.to_yaml();
  EXPECT_NE(c.to_yaml().find("dp: auto"), std::string::npos) << c.to_yaml();
  c = load_job_config(write_yaml(kBase), {"threads=3", "parallel.dp=2"});
  EXPECT_EQ(c.threads, 3);
  EXPECT_EQ(c.parallel.dp, 2);
  for (const char* bad : {"threads=0", "threads=-2", "parallel.dp=0", "threads=some"})
    EXPECT_THROW(load_job_config(write_yaml(kBase), {bad}), UserError) << bad;
  // dp: auto is a hand-picked grid: not with a plan file or parallel: auto.
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"parallel.auto=true", "parallel.dp=auto"}), UserError);
}

TEST(JobConfig, RowsAndShards) {
  auto c = load_job_config(write_yaml(std::string(kBase) + "rows: {first: 10, count: 5}\n"), {});
  EXPECT_TRUE(c.subset());
  EXPECT_EQ(c.row_range(100).first, 10);
  EXPECT_EQ(c.row_range(100).end, 15);
  EXPECT_EQ(c.row_range(12).end, 12);  // stops at the input's end
  EXPECT_THROW(c.row_range(10), UserError);  // first past the input
  c = load_job_config(write_yaml(kBase), {"rows.first=7"});
  EXPECT_EQ(c.row_range(20).first, 7);
  EXPECT_EQ(c.row_range(20).end, 20);

  // n shards cover the input exactly, in order, sizes within one row.
  int64_t at = 0;
  for (int i = 0; i < 3; ++i) {
    c = load_job_config(write_yaml(kBase), {"shard.index=" + std::to_string(i), "shard.count=3"});
    const RowRange r = c.row_range(50);
    EXPECT_EQ(r.first, at);
    EXPECT_GE(r.count(), 16);
    EXPECT_LE(r.count(), 17);
    at = r.end;
  }
  EXPECT_EQ(at, 50);
  c = load_job_config(write_yaml(kBase), {"shard.index=0", "shard.count=4"});
  EXPECT_EQ(c.row_range(3).count(), 0);  // more shards than rows: shard 0 of 4 holds none of 3 (run_job refuses it)

  c = load_job_config(write_yaml(kBase), {});
  EXPECT_FALSE(c.subset());
  EXPECT_EQ(c.row_range(9).first, 0);
  EXPECT_EQ(c.row_range(9).end, 9);

  for (std::vector<std::string> bad : std::vector<std::vector<std::string>>{
           {"rows.first=-1"}, {"rows.count=0"}, {"shard.index=2", "shard.count=2"}, {"shard.index=0"},
           {"shard.count=0", "shard.index=0"}, {"rows.first=0", "shard.index=0", "shard.count=2"}})
    EXPECT_THROW(load_job_config(write_yaml(kBase), bad), UserError) << bad[0];
}

TEST(JobConfig, FingerprintHoldsTheRowRange) {
  auto whole = load_job_config(write_yaml(kBase), {});
  auto shard0 = load_job_config(write_yaml(kBase), {"shard.index=0", "shard.count=2"});
  auto shard1 = load_job_config(write_yaml(kBase), {"shard.index=1", "shard.count=2"});
  auto rows = load_job_config(write_yaml(kBase), {"rows.first=0", "rows.count=4"});
  EXPECT_NE(whole.fingerprint(), shard0.fingerprint());
  EXPECT_NE(shard0.fingerprint(), shard1.fingerprint());
  EXPECT_NE(whole.fingerprint(), rows.fingerprint());
  EXPECT_NE(shard0.fingerprint().find("shard: {index: 0, count: 2, max_tokens: 2048, max_sequences: 32}\n"),
            std::string::npos);
  EXPECT_EQ(whole.fingerprint().find("rows"), std::string::npos);  // unchanged for whole-input jobs
}

// Issue 14: the stored job (`job_yaml`) is a job file: valid YAML, every key nested as in the job
// reference, and loading it gives the same job.
TEST(JobConfig, ToYamlRoundTrips) {
  const std::string text = std::string(kBase) +
                           "generate: {temperature: 0.7, top_p: 0.9, seed: 18446744073709551615}\n"
                           "parallel: {tp: 2, speeds: [2, 1.5], spd: {from: cal.yaml, budget: {max_kl: 0.01}}}\n"
                           "calibrate: {prompts: cal.h5, rows: 3}\nplan: {objective: latency}\nprogress: {every: 2.5}\n";
  const auto a = load_job_config(write_yaml(text), {"threads=3"});
  const std::string stored = a.to_yaml();
  const YAML::Node root = YAML::Load(stored);
  EXPECT_EQ(root["parallel"]["spd"]["budget"]["max_kl"].as<double>(), 0.01) << stored;
  EXPECT_FALSE(root["parallel"]["spd"]["budget"]["min_top1"]) << stored;  // -1: the file's own
  EXPECT_EQ(root["generate"]["temperature"].as<std::string>(), "0.7") << stored;
  const auto b = load_job_config(write_yaml(stored), {});
  EXPECT_EQ(a.fingerprint(), b.fingerprint()) << stored;
  EXPECT_EQ(b.to_yaml(), stored);
  EXPECT_EQ(b.threads, 3);
  EXPECT_EQ(b.generate.seed, 18446744073709551615ull);
  EXPECT_EQ(b.parallel.speeds, (std::vector<double>{2, 1.5}));
  EXPECT_EQ(b.calibrate.rows, 3);
  EXPECT_EQ(b.plan.objective, "latency");
  EXPECT_DOUBLE_EQ(b.progress.every, 2.5);
  EXPECT_EQ(b.output, a.output);

  for (const char* extra : {"parallel: auto\n", "parallel: {auto: true, spd: {from: c.yaml}}\n",
                            "parallel: {plan: p.yaml}\nbackend: cuda\ncuda: {device: 1, dtype: fp32}\n",
                            "task: embed\nembed: {pooling: cls, normalize: true}\n",
                            "threads: auto\nparallel: {tp: 2, dp: auto}\nrows: {first: 3}\n",
                            "rows: {first: 3, count: 9}\n", "shard: {index: 1, count: 4}\n"}) {
    std::string t = std::string(kBase) + extra;
    if (t.find("task: embed") != std::string::npos) t.replace(t.find("task: generate\n"), 15, "");
    const auto c = load_job_config(write_yaml(t), {});
    const auto d = load_job_config(write_yaml(c.to_yaml()), {});
    EXPECT_EQ(c.fingerprint(), d.fingerprint()) << c.to_yaml();
    EXPECT_EQ(c.parallel.auto_plan, d.parallel.auto_plan);
    EXPECT_EQ(c.cuda.device, d.cuda.device);
    EXPECT_EQ(c.embed.pooling, d.embed.pooling);
    EXPECT_EQ(c.threads, d.threads);
    EXPECT_EQ(c.parallel.dp, d.parallel.dp);
    EXPECT_EQ(c.row_range(100).first, d.row_range(100).first) << c.to_yaml();
    EXPECT_EQ(c.row_range(100).end, d.row_range(100).end) << c.to_yaml();
  }
}

// Relative paths in a job file are read from the job file's folder; --set paths from the working
// directory; absolute paths and defaults are left alone.
TEST(JobConfig, RelativePathsFollowTheJobFile) {
  const auto dir = std::filesystem::temp_directory_path() / ("lowsync_jobdir_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "sub");
  const auto job = dir / "sub" / "job.yaml";
  std::ofstream(job) << "model: ../models/m\ntask: generate\ninput: in.h5\noutput: /abs/out.h5\n"
                        "parallel: {plan: p.yaml, spd: {from: c.yaml}}\ncalibrate: {prompts: cal.h5, output: cal.yaml}\n"
                        "plan: {profile: prof.yaml, output: out_plan.yaml}\n";
  const auto c = load_job_config(job.string(), {"parallel.spd.from=mine.yaml"});
  const std::string s = (dir / "sub").string() + "/";
  EXPECT_EQ(c.model, dir.string() + "/models/m");
  EXPECT_EQ(c.input, s + "in.h5");
  EXPECT_EQ(c.output, "/abs/out.h5");
  EXPECT_EQ(c.parallel.plan, s + "p.yaml");
  EXPECT_EQ(c.parallel.spd.from, "mine.yaml");  // --set: the working directory's
  EXPECT_EQ(c.calibrate.prompts, s + "cal.h5");
  EXPECT_EQ(c.calibrate.output, s + "cal.yaml");
  EXPECT_EQ(c.plan.profile, s + "prof.yaml");
  EXPECT_EQ(c.plan.output, s + "out_plan.yaml");
  const auto d = load_job_config(job.string(), {"parallel.spd.from=x", "plan.profile=q.yaml"});
  EXPECT_EQ(d.plan.profile, "q.yaml");
  // Defaults are not in the file: they stay relative to the working directory.
  std::ofstream(job) << kBase;
  const auto e = load_job_config(job.string(), {});
  EXPECT_EQ(e.plan.profile, "profile.yaml");
  EXPECT_EQ(e.calibrate.output, "calibration.yaml");
  EXPECT_EQ(e.model, s + "m");
  std::filesystem::remove_all(dir);
}

// debug.dump: a list of names; its file defaults to the output's name with .dump.h5 and is stored
// by to_yaml; the dump does not change results, so it is not in the fingerprint.
TEST(JobConfig, DebugDumpKeys) {
  const auto a = load_job_config(write_yaml(std::string(kBase) + "debug: {dump: [\"blk.*.attn_out\", result_norm]}\n"), {});
  EXPECT_EQ(a.debug.dump, (std::vector<std::string>{"blk.*.attn_out", "result_norm"}));
  EXPECT_EQ(std::filesystem::path(a.debug.dump_file).filename(), "out.dump.h5");
  const auto b = load_job_config(write_yaml(a.to_yaml()), {});
  EXPECT_EQ(b.debug.dump, a.debug.dump);
  EXPECT_EQ(std::filesystem::path(b.debug.dump_file).filename(), "out.dump.h5");
  EXPECT_EQ(a.fingerprint(), load_job_config(write_yaml(kBase), {}).fingerprint());
  const auto c = load_job_config(write_yaml(kBase), {"debug.dump=[\"*\"]", "debug.dump_file=d.h5"});
  EXPECT_EQ(c.debug.dump_file, "d.h5");
  EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + "debug: {dump: blk.0.l_out}\n"), {}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + "debug: {dump: [\"*\"], dump_file: out.h5}\n"), {}),
               UserError);
}

// parallel.sync_dtype changes results (compressed sums): part of the fingerprint, stored by to_yaml,
// an unknown name refused with the choices.
TEST(JobConfig, SyncDtypeKey) {
  const auto a = load_job_config(write_yaml(std::string(kBase) + "parallel: {tp: 2, sync_dtype: q8}\n"), {});
  EXPECT_EQ(a.parallel.sync_dtype, SyncDType::Q8);
  EXPECT_NE(a.fingerprint(), load_job_config(write_yaml(std::string(kBase) + "parallel: {tp: 2}\n"), {}).fingerprint());
  EXPECT_EQ(load_job_config(write_yaml(a.to_yaml()), {}).parallel.sync_dtype, SyncDType::Q8);
  try {
    load_job_config(write_yaml(kBase), {"parallel.sync_dtype=fp8"});
    FAIL() << "fp8 accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("key 'parallel.sync_dtype' is 'fp8'; expected fp32, bf16 or q8"), std::string::npos)
        << e.what();
  }
}

// weights.dtype: auto by default (absent from the fingerprint, as fp32 is: files from before the
// key resume), bf16 / fp16 part of the fingerprint and stored by to_yaml; an unknown name refused
// with the choices; on backend: cuda it may only repeat cuda.dtype.
TEST(JobConfig, WeightsDtypeKey) {
  const auto plain = load_job_config(write_yaml(kBase), {});
  EXPECT_EQ(plain.weights_dtype, WeightsDType::Auto);
  const auto a = load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: bf16}\n"), {});
  EXPECT_EQ(a.weights_dtype, WeightsDType::BF16);
  EXPECT_NE(a.fingerprint(), plain.fingerprint());
  EXPECT_EQ(load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: fp32}\n"), {}).fingerprint(),
            plain.fingerprint());
  EXPECT_EQ(load_job_config(write_yaml(a.to_yaml()), {}).weights_dtype, WeightsDType::BF16);
  EXPECT_EQ(load_job_config(write_yaml(kBase), {"weights.dtype=fp16"}).weights_dtype, WeightsDType::F16);
  auto refused = [&](const std::string& text, const std::vector<std::string>& sets) {
    try {
      load_job_config(write_yaml(text), sets);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(refused(kBase, {"weights.dtype=int4"}).find("key 'weights.dtype' is 'int4'; expected auto, fp32, bf16, fp16 or q8_0"),
            std::string::npos);
  EXPECT_NE(refused(std::string(kBase) + "backend: cuda\ncuda: {dtype: bf16}\nweights: {dtype: fp16}\n", {})
                .find("weights.dtype"),
            std::string::npos);
  EXPECT_EQ(refused(std::string(kBase) + "backend: cuda\ncuda: {dtype: fp16}\nweights: {dtype: fp16}\n", {}), "accepted");
}

TEST(JobConfig, GenerationControlsAndScoreWindowsRoundTripAndFingerprint) {
  const std::string text = std::string(kBase) +
                           "generate: {stop_token_ids: [2, 7], min_new_tokens: 3, repetition_penalty: 1.2, "
                           "presence_penalty: 0.5, frequency_penalty: -0.25, min_p: 0.05, logprobs: 4}\n";
  const auto a = load_job_config(write_yaml(text), {});
  EXPECT_EQ(a.generate.stop_token_ids, (std::vector<int>{2, 7}));
  EXPECT_TRUE(a.generate.has_stop_token_ids);
  const auto b = load_job_config(write_yaml(a.to_yaml()), {});
  EXPECT_EQ(a.fingerprint(), b.fingerprint()) << a.to_yaml();
  EXPECT_EQ(b.to_yaml(), a.to_yaml());
  EXPECT_EQ(b.generate.stop_token_ids, a.generate.stop_token_ids);
  EXPECT_FLOAT_EQ(b.generate.frequency_penalty, -0.25f);
  EXPECT_EQ(b.generate.logprobs, 4);
  // Each control changes what is generated (or written): the fingerprint holds it; defaults leave
  // the fingerprint of files written before these keys.
  const auto plain = load_job_config(write_yaml(kBase), {});
  EXPECT_EQ(plain.fingerprint().find("min_p"), std::string::npos) << plain.fingerprint();
  for (const char* set : {"generate.stop_token_ids=[2]", "generate.stop_token_ids=[]", "generate.min_new_tokens=1",
                          "generate.repetition_penalty=1.1", "generate.presence_penalty=0.1",
                          "generate.frequency_penalty=0.1", "generate.min_p=0.1", "generate.logprobs=1"})
    EXPECT_NE(load_job_config(write_yaml(kBase), {set}).fingerprint(), plain.fingerprint()) << set;

  const std::string score = "model: m\ntask: score\ninput: in.h5\noutput: out.h5\nscore: {window: 64}\n";
  const auto s = load_job_config(write_yaml(score), {});
  EXPECT_EQ(s.score.stride, 32);  // window / 2
  EXPECT_EQ(load_job_config(write_yaml(s.to_yaml()), {}).fingerprint(), s.fingerprint());
  EXPECT_NE(load_job_config(write_yaml(score), {"score.stride=16"}).fingerprint(), s.fingerprint());
  EXPECT_THROW(load_job_config(write_yaml(score), {"score.stride=64"}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(std::string(kBase) + "score: {stride: 4}\n"), {}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"generate.min_p=1.5"}), UserError);
  EXPECT_NE(load_job_config(write_yaml(kBase), {"generate.n=3"}).fingerprint(), plain.fingerprint());
  EXPECT_EQ(load_job_config(write_yaml(load_job_config(write_yaml(kBase), {"generate.n=3"}).to_yaml()), {}).generate.n, 3);
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"generate.n=0"}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"generate.stop_token_ids=3"}), UserError);
  EXPECT_THROW(load_job_config(write_yaml(kBase), {"generate.stop_token_ids=[2]", "generate.stop_at_eos=false"}),
               UserError);
}

// parallel.split_head: true, false or auto (one error line naming the key otherwise); kept by
// to_yaml; in the fingerprint only when not off (files written before the key keep theirs).
TEST(JobConfig, SplitHead) {
  const auto off = load_job_config(write_yaml(kBase), {});
  EXPECT_EQ(off.parallel.split_head, SplitHead::Off);
  EXPECT_EQ(off.fingerprint().find("split_head"), std::string::npos);
  for (const auto& [value, want] : {std::pair{"true", SplitHead::On}, {"false", SplitHead::Off}, {"auto", SplitHead::Auto}}) {
    const auto c = load_job_config(write_yaml(std::string(kBase) + "parallel: {tp: 2, split_head: " + value + "}\n"), {});
    EXPECT_EQ(c.parallel.split_head, want) << value;
    const auto d = load_job_config(write_yaml(c.to_yaml()), {});
    EXPECT_EQ(d.parallel.split_head, want) << c.to_yaml();
    EXPECT_EQ(c.fingerprint(), d.fingerprint());
  }
  EXPECT_NE(load_job_config(write_yaml(kBase), {"parallel.split_head=true"}).fingerprint().find("split_head: true"),
            std::string::npos);
  try {
    load_job_config(write_yaml(kBase), {"parallel.split_head=maybe"});
    FAIL() << "no error for split_head: maybe";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("key 'parallel.split_head' is 'maybe'; expected true, false or auto"),
              std::string::npos) << e.what();
  }
}

// parallel.sync_wait: spin, sleep or auto (the default; one error line naming the key otherwise);
// kept by to_yaml; not in the fingerprint (how a rank waits changes no result: a resumed job may change it).
TEST(JobConfig, SyncWait) {
  const auto dflt = load_job_config(write_yaml(kBase), {});
  EXPECT_EQ(dflt.parallel.sync_wait, SyncWait::Spin);
  for (const auto& [value, want] : {std::pair{"spin", SyncWait::Spin}, {"sleep", SyncWait::Sleep}, {"auto", SyncWait::Auto}}) {
    const auto c = load_job_config(write_yaml(std::string(kBase) + "parallel: {tp: 2, sync_wait: " + value + "}\n"), {});
    EXPECT_EQ(c.parallel.sync_wait, want) << value;
    EXPECT_EQ(load_job_config(write_yaml(c.to_yaml()), {}).parallel.sync_wait, want) << c.to_yaml();
    EXPECT_EQ(c.fingerprint(), load_job_config(write_yaml(kBase), {"parallel.tp=2"}).fingerprint());
  }
  try {
    load_job_config(write_yaml(kBase), {"parallel.sync_wait=nap"});
    FAIL() << "no error for sync_wait: nap";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("key 'parallel.sync_wait' is 'nap'; expected spin, sleep or auto"),
              std::string::npos) << e.what();
  }
}

TEST(JobConfig, RuntimePlanKey) {
  auto c = load_job_config(write_yaml(std::string(kBase) + "parallel: {dp: auto}\nplan: {runtime: true}\n"), {});
  EXPECT_TRUE(c.plan.runtime);
  EXPECT_FALSE(load_job_config(write_yaml(kBase), {}).plan.runtime);
  // A speed key: a resumed job may turn it on or off.
  EXPECT_EQ(c.fingerprint(), load_job_config(write_yaml(kBase), {"parallel.dp=auto"}).fingerprint());
  for (const char* bad : {"task=score", "batch.continuous=false", "parallel.auto=true"}) {
    try {
      load_job_config(write_yaml(std::string(kBase) + "plan: {runtime: true}\n"), {bad});
      FAIL() << bad << ": no error";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("plan.runtime"), std::string::npos) << e.what();
    }
  }
}

namespace lowsync {
namespace {
// weights.bf16_dot: kept by to_yaml, in the fingerprint only when on; refused without bf16 weights
// or on the CUDA backend, one line naming the key.
TEST(JobConfig, Bf16DotKey) {
  const auto off = load_job_config(write_yaml(kBase), {});
  EXPECT_FALSE(off.weights_bf16_dot);
  const auto on = load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: bf16, bf16_dot: true}\n"), {});
  EXPECT_TRUE(on.weights_bf16_dot);
  EXPECT_TRUE(load_job_config(write_yaml(on.to_yaml()), {}).weights_bf16_dot);
  EXPECT_NE(on.fingerprint(), load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: bf16}\n"), {}).fingerprint());
  EXPECT_EQ(off.fingerprint().find("bf16_dot"), std::string::npos);
  for (const char* bad : {"weights.dtype=fp16", "backend=cuda"}) {
    try {
      load_job_config(write_yaml(std::string(kBase) + "weights: {bf16_dot: true}\n"), {bad});
      FAIL() << bad << ": no error";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("weights.bf16_dot"), std::string::npos) << e.what();
    }
  }
}
}  // namespace
}  // namespace lowsync

// memory.limit: one value for every rank, or a list (one per rank); memory.pool: host or peer (peer
// needs a limit). A bad value names the key and what was expected.
TEST(JobConfig, MemoryLimitPerRankAndPool) {
  auto one = load_job_config(write_yaml(std::string(kBase) + "memory: {limit: 2GiB}\n"), {});
  EXPECT_EQ(one.memory_limit.bytes, int64_t(2) << 30);
  EXPECT_TRUE(one.memory_limits.empty());
  EXPECT_EQ(one.memory_pool, MemoryPool::Host);
  auto each = load_job_config(write_yaml(std::string(kBase) + "memory: {limit: [300MB, 50%], pool: peer}\n"), {});
  ASSERT_EQ(each.memory_limits.size(), 2u);
  EXPECT_EQ(each.memory_limits[0].bytes, 300000000);
  EXPECT_DOUBLE_EQ(each.memory_limits[1].fraction, 0.5);
  EXPECT_EQ(each.memory_pool, MemoryPool::Peer);
  auto set = load_job_config(write_yaml(kBase), {"memory.limit=[1GB, 2GB]", "memory.pool=peer"});
  EXPECT_EQ(set.memory_limits.size(), 2u);
  auto again = load_job_config(write_yaml(each.to_yaml()), {});  // the job attribute reads back
  EXPECT_EQ(again.memory_limits.size(), 2u);
  EXPECT_EQ(again.memory_pool, MemoryPool::Peer);
  auto why = [](const std::string& text) {
    try {
      load_job_config(write_yaml(std::string(kBase) + text), {});
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(why("memory: {pool: pier, limit: 1GB}\n").find("'memory.pool' is 'pier'; expected host or peer"), std::string::npos);
  EXPECT_NE(why("memory: {pool: peer}\n").find("set memory.limit"), std::string::npos);
  EXPECT_NE(why("memory: {limit: [1GB, lots]}\n").find("'memory.limit'"), std::string::npos);
}

namespace lowsync {
namespace {
// weights.q8_dot: kept by to_yaml, in the fingerprint only when on; refused without q8_0 weights
// or on the CUDA backend, one line naming the key.
TEST(JobConfig, Q8DotKey) {
  const auto off = load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: q8_0}\n"), {});
  EXPECT_FALSE(off.weights_q8_dot);
  const auto on = load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: q8_0, q8_dot: true}\n"), {});
  EXPECT_TRUE(on.weights_q8_dot);
  EXPECT_TRUE(load_job_config(write_yaml(on.to_yaml()), {}).weights_q8_dot);
  EXPECT_NE(on.fingerprint(), off.fingerprint());
  EXPECT_EQ(off.fingerprint().find("q8_dot"), std::string::npos);
  for (const char* bad : {"weights.dtype=auto", "weights.dtype=bf16", "backend=cuda"}) {
    try {
      load_job_config(write_yaml(std::string(kBase) + "weights: {dtype: q8_0, q8_dot: true}\n"), {bad});
      FAIL() << bad << ": no error";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find("weights.q8_dot"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
}
}  // namespace
}  // namespace lowsync
