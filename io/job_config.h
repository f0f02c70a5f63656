#pragma once
// The job YAML: every key documented in README.md, unknown keys are errors, `--set key=value`
// overrides (dotted paths for nested keys).
#include <cstdint>
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
  std::string pooling = "mean";  // mean | cls | last (the last token: decoder embedding models)
  bool normalize = false;
};

struct BatchOptions {
  int max_tokens = 2048;
  int max_sequences = 32;
  bool continuous = true;  // generate: a finished row's slot goes to a waiting prompt at once
};

// Sync-Point Drop: which layers skip their attention all-reduce. Either listed (`drop`) or taken
// from a calibration file (`from`) as the longest least-sensitive prefix within `budget`.
struct SpdOptions {
  std::vector<int> drop;
  std::string from;
  double max_kl = -1;    // budget; < 0: the calibration file's own
  double min_top1 = -1;  // budget; < 0: the calibration file's own
};

struct ParallelOptions {
  int tp = 1;
  int bp = 1;  // ranks per replica for a decoupled model (each computes a share of its sub-blocks)
  int dp = 1;  // 0: `auto`, every rank of the world in replicas (world / (group x pp)); resolved in plan_from_job
  int group() const { return tp * bp; }  // ranks per pipeline stage of a replica
  int pp = 1;                  // pipeline stages per replica
  std::vector<int> stages;     // layers per stage (empty: even)
  int micro_batches = 0;       // a batch split this many ways in a pipeline (0: 2 x pp)
  std::vector<double> speeds;  // relative speed of each rank of a stage (empty: equal): uneven shares
  SpdOptions spd;
  std::string plan;            // a saved plan.yaml to run instead of the keys above
  bool auto_plan = false;      // `parallel: auto`: the planner chooses from a profile and the cost model
};

// `lowsync plan` and `parallel: auto`.
struct PlanOptions {
  std::string objective = "throughput";  // throughput (tokens/s of the whole job) | latency (one sequence)
  std::string profile = "profile.yaml";  // read if present, else measured (and written) first
  std::string output = "plan.yaml";      // where `lowsync plan` writes the chosen plan
};

// `lowsync calibrate`: measures each layer's sensitivity to SPD on calibration prompts.
struct CalibrateOptions {
  std::string prompts;    // prompts HDF5; empty: the job's input
  int rows = 16;          // prompts used at most
  double max_kl = 0.05;   // budget: mean next-token KL(full TP || SPD) at most
  double min_top1 = 0.9;  // budget: top-1 agreement with full TP at least
  std::string output = "calibration.yaml";
};

// `backend: cuda`: which GPU and the weights' storage type (matrix products accumulate in fp32).
struct CudaOptions {
  std::string device = "auto";  // auto (node-local rank modulo the visible devices) or a device number
  std::string dtype = "bf16";    // bf16 | fp16 | fp32
  int device_index() const;      // -1 for auto
};

// Progress lines of `run` (rank 0): at most one every `every` seconds (0: after every batch).
struct ProgressOptions {
  double every = 10;
};

// `memory.limit`: the memory a rank may use; layers beyond it are streamed from the checkpoint.
struct MemoryLimit {
  int64_t bytes = 0;    // > 0: this many bytes
  double fraction = 0;  // > 0: this share of the memory free on the rank's host, split among its ranks
  bool set() const { return bytes > 0 || fraction > 0; }
};

// Which rows of the input a job computes: `rows: {first, count}` or `shard: {index, count}` (one of
// them at most). The output then holds only those rows, in input order.
struct RowsOptions {
  int64_t first = 0;
  int64_t count = -1;  // -1: to the end of the input
};
struct ShardOptions {
  int index = 0;
  int count = 0;  // 0: no shard given
};
struct RowRange {
  int64_t first = 0, end = 0;  // input rows [first, end)
  int64_t count() const { return end - first; }
};

struct JobConfig {
  std::string path;  // the YAML file
  std::string model, task, input, output;
  int threads = 1;  // 0: `auto`, resolved on each rank by resolve_threads (jobs/make_backend.h)
  std::string backend = "cpu";  // cpu | cuda
  std::string trace;            // Chrome trace-event JSON to write (empty: none)
  double mpi_timeout = 1800;    // seconds an MPI call may wait before the job is aborted (0: never)
  CudaOptions cuda;
  GenerateOptions generate;
  EmbedOptions embed;
  BatchOptions batch;
  ParallelOptions parallel;
  CalibrateOptions calibrate;
  PlanOptions plan;
  MemoryLimit memory_limit;
  ProgressOptions progress;
  RowsOptions rows;
  ShardOptions shard;
  bool has_rows = false;  // `rows` given

  // True when the job computes a part of the input only (`rows` or `shard`).
  bool subset() const { return has_rows || shard.count > 0; }
  // The input rows this job computes, of an input of `input_rows` rows: `rows` (stopping at the
  // input's end; UserError naming the key when it starts past it), or a shard's nominal rows
  // [i N / n, (i + 1) N / n) (floor; n shards cover the input exactly, in order), which run_job then
  // moves to batch boundaries (a shard takes the batches that start in it; may be empty).
  RowRange row_range(int64_t input_rows) const;

  // The keys that decide what the results are (not where they go or how fast): a resumed job
  // must match the original on these.
  std::string fingerprint() const;
  // Every key with its effective value, as a job YAML nested as in README's reference (the output
  // file's `job_yaml` attribute): loading it gives the same job. Paths are written absolute, so
  // that the stored job runs again from any folder.
  std::string to_yaml() const;
};

// Reads a job file and applies `--set key=value` overrides. Relative paths written in the job
// file (model, input, output, parallel.spd.from, parallel.plan, calibrate.prompts,
// calibrate.output, plan.profile, plan.output) are taken relative to the job file's folder, so a
// job runs the same from any working directory; --set values and defaults stay relative to the
// working directory, as any command-line path.
JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides);

}  // namespace lowsync
