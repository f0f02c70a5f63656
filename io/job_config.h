#pragma once
// The job YAML: every key documented in README.md, unknown keys are errors, `--set key=value`
// overrides (dotted paths for nested keys).
#include <cstdint>
#include <string>
#include <vector>

#include "io/memory_pool.h"
#include "io/weights_dtype.h"
#include "mpi_comm/sync_codec.h"
#include "mpi_comm/sync_wait.h"

namespace lowsync {

struct GenerateOptions {
  int max_new_tokens = 32;
  float temperature = 0.f;  // 0 = greedy
  int top_k = 0;            // 0 = no top-k cut
  float top_p = 1.f;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  // Token ids that end a row (finish reason eos). Not given: the model's EOS ids (config.json and
  // generation_config.json). stop_at_eos: false turns them all off.
  std::vector<int> stop_token_ids;
  bool has_stop_token_ids = false;
  int min_new_tokens = 0;          // stop token ids are masked until a row has this many new tokens
  float repetition_penalty = 1.f;  // > 1 discourages tokens of the prompt and the output (CTRL, as transformers)
  float presence_penalty = 0.f;    // subtracted from the logit of each token the output holds (OpenAI)
  float frequency_penalty = 0.f;   // subtracted once per occurrence in the output (OpenAI)
  float min_p = 0.f;               // sampling keeps tokens of probability >= min_p x the top one's
  int logprobs = 0;                // top alternatives written per new token (the token's own log-prob always is)
  int n = 1;                       // samples per prompt: output rows prompt x sample (/sample says which)
  // Not a key: the prompts file's stop sequences (/stop_ids), set by resolve_stops (jobs/stopping.h).
  std::vector<std::vector<int32_t>> stop_sequences;
};

// score: rows longer than a window are scored in overlapping windows (jobs/score_windows.h).
struct ScoreOptions {
  int window = 0;  // tokens per window (0: every row in one pass)
  int stride = 0;  // tokens between window starts, 1 .. window - 1 (0: window / 2)
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

// Decoupled checkpoints of the job's model (python/decoupled) that `parallel: auto` may run instead
// of it, each with the fidelity it was measured at (fidelity.yaml): those within the budget are
// planned beside the model's own grids (planning/decoupled_candidates.h).
struct DecoupledOptions {
  std::vector<std::string> from;  // checkpoint directories
  double min_cosine = -1;         // budget: mean cosine to the model's embeddings at least; < 0: none
  double max_kl = -1;             // budget: mean next-token KL(model || checkpoint) at most; < 0: none
  bool budgeted() const { return min_cosine >= 0 || max_kl >= 0; }
};

// parallel.split_head: whether the ranks of a replica's last stage split the output head's
// vocabulary rows (planning/plan.h, Plan::head).
enum class SplitHead { Off, On, Auto };
const char* split_head_name(SplitHead s);  // "false" | "true" | "auto"

struct ParallelOptions {
  int tp = 1;
  int bp = 1;  // ranks per replica for a decoupled model (each computes a share of its sub-blocks)
  int dp = 1;  // 0: `auto`, every rank of the world in replicas (world / (group x pp)); resolved in plan_from_job
  int group() const { return tp * bp; }  // ranks per pipeline stage of a replica
  int pp = 1;                  // pipeline stages per replica
  std::vector<int> stages;     // layers per stage (empty: even)
  int micro_batches = 0;       // a batch split this many ways in a pipeline (0: `auto`, the plan chooses)
  std::vector<double> speeds;  // relative speed of each rank of a stage (empty: equal): uneven shares
  SpdOptions spd;
  DecoupledOptions decoupled;  // checkpoints the planner may choose instead of the model
  SyncDType sync_dtype = SyncDType::F32;  // how syncs' partial sums travel: fp32 (exact), bf16, q8
  SplitHead split_head = SplitHead::Off;  // output head's vocabulary split over the group's ranks
  SyncWait sync_wait = SyncWait::Spin;     // how a rank waits in its group's syncs (mpi_comm/communicator.h)
  std::string plan;            // a saved plan.yaml to run instead of the keys above
  bool auto_plan = false;      // `parallel: auto`: the planner chooses from a profile and the cost model
};

// `lowsync plan` and `parallel: auto`.
struct PlanOptions {
  std::string objective = "throughput";  // throughput (tokens/s of the whole job) | latency (one sequence)
  std::string profile = "profile.yaml";  // read if present, else measured (and written) first
  std::string output = "plan.yaml";      // where `lowsync plan` writes the chosen plan
  bool runtime = false;  // generate on a dp grid: the runtime planner may turn the job's tail tensor-parallel
};

// How `lowsync calibrate` orders the layers: `kl`, each layer dropped alone, by the next-token KL
// it causes; `progressive` (the SPD paper's), from the last layer backwards with every later
// layer already dropped, by the perplexity increase when this one drops too.
enum class CalibrateMethod { Kl, Progressive };
const char* calibrate_method_name(CalibrateMethod m);

// `lowsync calibrate`: measures each layer's sensitivity to SPD on calibration prompts.
struct CalibrateOptions {
  CalibrateMethod method = CalibrateMethod::Kl;
  // progressive: relative perplexity increases from which a layer is sensitive / extremely sensitive
  double sensitive = 0.005, extreme = 0.03;
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

// `debug.dump`: named intermediate tensors of the first forward pass (layers/tensor_taps.h lists
// the names), written to an HDF5 file for layer-by-layer comparison with a reference.
struct DebugOptions {
  std::vector<std::string> dump;  // names or shell-style globs; empty: no dump
  std::string dump_file;          // where; empty in the YAML: the output's path with .dump.h5
};

struct JobConfig {
  std::string path;  // the YAML file
  std::string model, task, input, output;
  int threads = 1;  // 0: `auto`, resolved on each rank by resolve_threads (jobs/make_backend.h)
  std::string backend = "cpu";  // cpu | cuda
  std::string trace;            // Chrome trace-event JSON to write (empty: none)
  double mpi_timeout = 1800;    // seconds an MPI call may wait before the job is aborted (0: never)
  CudaOptions cuda;
  WeightsDType weights_dtype = WeightsDType::Auto;
  bool weights_bf16_dot = false;  // bf16 weights: decode products round x to bf16 (layers/bf16_dot_matmul.h)
  bool weights_q8_dot = false;    // q8_0 weights: decode products quantise x to q8_0 (layers/q8_dot_matmul.h)
  GenerateOptions generate;
  ScoreOptions score;
  EmbedOptions embed;
  BatchOptions batch;
  ParallelOptions parallel;
  CalibrateOptions calibrate;
  PlanOptions plan;
  MemoryLimit memory_limit;                 // memory.limit as one value: every rank's
  std::vector<MemoryLimit> memory_limits;   // memory.limit as a list: [world rank] (a fraction: of that rank's host)
  MemoryPool memory_pool = MemoryPool::Host;  // memory.pool
  ProgressOptions progress;
  RowsOptions rows;
  ShardOptions shard;
  DebugOptions debug;
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
