#pragma once
// The run report (stdout and the output file's attributes): the plan that ran, throughput, and per
// rank the split between compute and communication, traffic and memory.
#include <string>
#include <vector>

#include "io/model_config.h"
#include "planning/plan.h"

namespace lowsync {

// Per-rank figures, gathered to every rank: [compute s, replica comm s, all-reduces, bytes sent,
// forward passes, tokens, weight bytes, peak resident MiB, anonymous resident MiB, prefill s,
// prefill passes, decode s, decode steps, pipeline s, pipeline bytes sent].
constexpr int kReportFields = 15;

struct RunTotals {
  double wall_s = 0;
  int64_t rows = 0, new_tokens = 0;
  std::string task;
};

std::string run_report(const Plan& plan, const ModelConfig& model, const std::vector<double>& per_rank,
                       const RunTotals& totals);
std::string run_report_json(const Plan& plan, const ModelConfig& model, const std::vector<double>& per_rank,
                            const RunTotals& totals);

// A field of /proc/self/status in MiB (VmHWM: peak resident set; RssAnon: resident memory not
// backed by a file, i.e. excluding the memory-mapped checkpoint pages).
double proc_status_mib(const char* field);

}  // namespace lowsync
