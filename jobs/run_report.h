#pragma once
// The run report (stdout and the output file's attributes): the plan that ran, throughput, and per
// rank the split between compute and communication, traffic and memory.
#include <string>
#include <vector>

#include "io/model_config.h"
#include "planning/plan.h"

namespace lowsync {

// Per-rank figures, gathered to every rank: [compute s, replica comm s, all-reduces, all-reduce
// message bytes, forward passes, tokens, weight bytes, peak resident MiB, anonymous resident MiB,
// prefill s, prefill passes, decode s, decode steps, pipeline s, pipeline bytes sent, streamed
// layer bytes, seconds stalled waiting for a streamed layer, replica sync bytes on the wire
// (mpi_comm/wire_bytes.h), threads, bytes of layers sent to peers (memory.pool: peer)].
constexpr int kReportFields = 20;

// This run (one segment of the file: a --resume makes another).
struct RunTotals {
  double wall_s = 0;
  int64_t rows = 0, new_tokens = 0;  // rows this run wrote, tokens it generated
  std::string task;
  int64_t first_row = 0;  // rows done in the file before this run
  std::string ended = "complete";  // or "stopped by SIGTERM", ...
  // The output's `run_report_json` before this run ("" if none): its segments come first.
  std::string previous_json;
  // score: the targets scored in the whole file so far and the sum of their log-probs (perplexity).
  int64_t scored_tokens = 0;
  double sum_logprob = 0;
  // plan.runtime: the runtime planner's decisions (JSON object, and lines of text); "" when off.
  std::string runtime_json, runtime_text;
  // parallel.micro_batches: auto in a pipelined generate job: the count's re-choices; "" when off.
  std::string micro_batch_json, micro_batch_text;
};

// The report covers the whole file: totals (rows, time, tokens, rates) over every segment with
// figures, one line per earlier segment, a segment killed without a report named as such; the
// per-rank lines are this run's.
std::string run_report(const Plan& plan, const ModelConfig& model, const std::vector<double>& per_rank,
                       const RunTotals& totals);
// Top level: the plan, totals over the file (`rows`, `wall_s`, `new_tokens`, `tokens`; score:
// `scored_tokens`, `mean_nll`, `perplexity`) and this
// run's `per_rank`; `segments`: every run that wrote rows to the file, in order, with its own
// figures (`first_row`, `rows`, `wall_s`, `new_tokens`, `tokens`, `ended`, `plan`, `per_rank`).
std::string run_report_json(const Plan& plan, const ModelConfig& model, const std::vector<double>& per_rank,
                            const RunTotals& totals);

// A field of /proc/self/status in MiB (VmHWM: peak resident set; RssAnon: resident memory not
// backed by a file, i.e. excluding the memory-mapped checkpoint pages).
double proc_status_mib(const char* field);

}  // namespace lowsync
