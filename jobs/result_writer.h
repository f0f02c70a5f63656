#pragma once
// The results HDF5 (README "Results"). Rows are appended in input order, a batch at a time: the
// batch's data is written and flushed first, its /done flags after, so that a killed job never
// leaves a row marked done whose data is not on disk. --resume re-opens such a file, checks that it
// was made by the same job and model, drops the data of rows not done, and continues after them.
//
// Writing can fail (a full disk, an I/O error), and HDF5 files are not crash-consistent: a flush
// that fails half-way can leave the superblock and object headers pointing at blocks never written,
// and then no row is readable. So (1) before a batch is written, the space it may take is reserved
// (fallocate past the end of the file), and a batch that does not fit fails there, with nothing of
// it in HDF5's caches; (2) chunks are written by H5Dwrite itself, not cached until the flush (HDF5
// 1.10 reports success from a flush whose chunk writes failed); (3) every call's result is checked,
// and after a failure HDF5 may not write to the file again, not even to close it. The file then
// stays as its last successful flush left it: its done rows readable, --resume possible.
#include <cstdint>
#include <string>
#include <vector>

#include "io/error.h"
#include "io/job_config.h"
#include "io/model_config.h"
#include "jobs/finish_reason.h"
#include "io/prompts.h"

namespace lowsync {

// The output could not be written. The message names the file, what was being written and why;
// the writer has already closed the file, fenced, so that what is on disk stays readable.
struct OutputError : UserError {
  using UserError::UserError;
};

struct RowResult {
  std::vector<int32_t> tokens;        // generate
  std::vector<float> token_logprobs;  // score: of each target; generate: of each new token (jobs/logprobs.h)
  std::vector<int32_t> top_ids;       // generate, logprobs K > 0: [tokens, K] the most likely tokens at each step
  std::vector<float> top_logprobs;    // generate, logprobs K > 0: [tokens, K] their log-probs
  FinishReason finish_reason = FinishReason::length;  // generate
  double sum_logprob = 0;             // score
  std::vector<float> embedding;       // embed
  float latency_ms = 0;
  // generate: time to the row's first new token from its batch's arrival at the replica (its
  // prompt's prefill, and in continuous batching its wait for a sequence slot), then from there to
  // its last new token.
  float prefill_ms = 0, decode_ms = 0;
};

class ResultWriter {
 public:
  // Creates the output (resume = false; it must not exist) or re-opens it (resume = true). Its rows
  // are the input rows `range` of an input of `input_rows` rows (attributes `input_first_row` and
  // `input_total_rows`); row i of the file is input row range.first + i. `ids` are those rows' ids
  // from the input (kind none: the input has no /ids), written to /ids as they are.
  ResultWriter(const JobConfig& job, const ModelConfig& model, const RowRange& range, int64_t input_rows,
               const RowIds& ids, bool resume);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  int64_t rows_done() const { return next_row_; }  // rows [0, rows_done) are complete
  // Appends rows [rows_done(), rows_done() + results.size()). Throws OutputError if they cannot be
  // written; the writer is then closed and rows_done() rows stay in the file.
  void append(const std::vector<RowResult>& results);
  // Stores the plan that ran and the run report (attributes `plan`, `run_report`, `run_report_json`;
  // score: also `scored_tokens`, `mean_nll` and `perplexity` over the done rows), marks the file complete
  // (`complete` = 1) if every row is done, and closes it. A run stopped early stores its report
  // too, so that the report of the --resume that completes the file can cover every segment.
  // Throws OutputError if that cannot be written.
  void finish(const std::string& report, const std::string& report_json, const std::string& plan_yaml);
  // score: targets scored in the done rows, and the sum of their log-probs (the file's perplexity).
  int64_t scored_tokens() const { return task_ == "score" ? values_ : 0; }
  double sum_logprob() const { return sum_logprob_; }
  // The `run_report_json` a re-opened file held ("" for a new file or one without a report).
  const std::string& previous_report_json() const { return previous_report_json_; }

 private:
  void create(const JobConfig& job, const ModelConfig& model, const RowIds& ids);
  void reopen(const JobConfig& job, const ModelConfig& model, const RowIds& ids);
  std::string reserve(int64_t bytes);
  [[noreturn]] void fail(const std::string& what, const std::string& cause);

  std::string path_, task_;
  long long file_ = -1;  // hid_t
  int64_t rows_ = 0, first_input_row_ = 0, input_rows_ = 0, next_row_ = 0, values_ = 0, hidden_ = 0;
  int top_k_ = 0;
  double sum_logprob_ = 0;  // score: over the done rows  // generate: alternatives per new token (/generated/top_ids, top_logprobs)
  std::string previous_report_json_;
  bool can_reserve_ = true;  // false once the file system says it cannot (then failures are caught at the write)
};

std::string model_fingerprint(const ModelConfig& model);

}  // namespace lowsync
