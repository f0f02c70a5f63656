#pragma once
// The job YAML: every key documented in README.md, unknown keys are errors, `--set key=value`
// overrides (dotted paths for nested keys).
#include <string>
#include <vector>

namespace lowsync {

struct GenerateOptions {
  int max_new_tokens = 32;
  float temperature = 0.f;  // 0 = greedy
  int top_k = 0;            // 0 = no top-k cut
  float top_p = 1.f;
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

struct EmbedOptions {
  std::string pooling = "mean";  // mean | cls
  bool normalize = false;
};

struct BatchOptions {
  int max_tokens = 2048;
  int max_sequences = 32;
};

struct ParallelOptions {
  int tp = 1;
  int dp = 1;
};

struct JobConfig {
  std::string path;  // the YAML file
  std::string model, task, input, output;
  int threads = 1;
  GenerateOptions generate;
  EmbedOptions embed;
  BatchOptions batch;
  ParallelOptions parallel;

  // The keys that decide what the results are (not where they go or how fast): a resumed job
  // must match the original on these.
  std::string fingerprint() const;
  // Every key with its effective value, as YAML.
  std::string to_yaml() const;
};

JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace lowsync
