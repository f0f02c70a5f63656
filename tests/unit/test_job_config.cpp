#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/error.h"
#include "io/job_config.h"

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
