#pragma once
// The results HDF5 (README "Results"). Rows are appended in input order, a batch at a time: the
// batch's data is written and flushed first, its /done flags after, so that a killed job never
// leaves a row marked done whose data is not on disk. --resume re-opens such a file, checks that it
// was made by the same job and model, drops the data of rows not done, and continues after them.
#include <cstdint>
#include <string>
#include <vector>

#include "io/job_config.h"
#include "io/model_config.h"

namespace lowsync {

struct RowResult {
  std::vector<int32_t> tokens;       // generate
  std::vector<float> token_logprobs;  // score
  double sum_logprob = 0;             // score
  std::vector<float> embedding;       // embed
  float latency_ms = 0;
};

class ResultWriter {
 public:
  // Creates the output (resume = false; it must not exist) or re-opens it (resume = true).
  ResultWriter(const JobConfig& job, const ModelConfig& model, int64_t rows, bool resume);
  ~ResultWriter();
  ResultWriter(const ResultWriter&) = delete;
  ResultWriter& operator=(const ResultWriter&) = delete;

  int64_t rows_done() const { return next_row_; }  // rows [0, rows_done) are complete
  // Appends rows [rows_done(), rows_done() + results.size()).
  void append(const std::vector<RowResult>& results);
  // Stores the run report (attributes `run_report`, `run_report_json`) and marks the file
  // complete (`complete` = 1).
  void finish(const std::string& report, const std::string& report_json);

 private:
  std::string path_, task_;
  long long file_ = -1;  // hid_t
  int64_t rows_ = 0, next_row_ = 0, values_ = 0, hidden_ = 0;
};

std::string model_fingerprint(const ModelConfig& model);

}  // namespace lowsync
