#include "jobs/run_report.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

namespace lowsync {

namespace {

std::string layer_list(const std::vector<bool>& drop) {
  std::string s;
  for (size_t l = 0; l < drop.size(); ++l)
    if (drop[l]) s += (s.empty() ? "" : ",") + std::to_string(l);
  return s.empty() ? "none" : s;
}

}  // namespace

double proc_status_mib(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kib = 0;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') kib = std::atof(line + n + 1);
  std::fclose(f);
  return kib / 1024.0;
}

std::string run_report_json(const Plan& plan, const ModelConfig& model, const std::vector<double>& all,
                            const RunTotals& t) {
  nlohmann::json j;
  j["split"] = split_name(plan.split);
  j["tp"] = plan.split == ReplicaSplit::Tensor ? plan.group : 1;
  j["bp"] = plan.split == ReplicaSplit::Block ? plan.group : 1;
  j["dp"] = plan.dp;
  j["pp"] = plan.pp;
  j["ranks"] = plan.world;
  j["layers"] = model.n_layers;
  std::vector<int> dropped;
  for (size_t l = 0; l < plan.spd_drop.size(); ++l)
    if (plan.spd_drop[l]) dropped.push_back(static_cast<int>(l));
  j["spd_drop"] = dropped;
  j["syncs_per_pass"] = plan.syncs_per_pass(model);
  j["plan"] = plan.describe();
  j["plan_chosen_by"] = plan.chosen_by;
  j["plan_yaml"] = plan.to_yaml(model);
  j["wall_s"] = t.wall_s;
  j["rows"] = t.rows;
  j["new_tokens"] = t.new_tokens;
  for (int r = 0; r < plan.world; ++r) {
    const double* f = &all[r * kReportFields];
    j["per_rank"].push_back({{"rank", r}, {"compute_s", f[0]}, {"comm_s", f[1]}, {"allreduces", int64_t(f[2])},
                             {"bytes_sent", int64_t(f[3])}, {"passes", int64_t(f[4])}, {"tokens", int64_t(f[5])},
                             {"weight_bytes", int64_t(f[6])}, {"peak_rss_mib", f[7]}, {"rss_anon_mib", f[8]},
                             {"planned_memory_bytes", plan.memory_of(r).total()},
                             {"prefill_s", f[9]}, {"prefill_passes", int64_t(f[10])}, {"decode_s", f[11]},
                             {"decode_steps", int64_t(f[12])}, {"stage", plan.stage_of(r)},
                             {"pipeline_s", f[13]}, {"pipeline_bytes", int64_t(f[14])}});
  }
  return j.dump();
}

std::string run_report(const Plan& plan, const ModelConfig& model, const std::vector<double>& all, const RunTotals& t) {
  std::ostringstream s;
  s << "plan: " << plan.describe() << " (" << plan.world << " ranks; chosen by " << plan.chosen_by << ")\n";
  if (plan.split == ReplicaSplit::Block)
    s << "strategy: decoupled model of " << model.bp.sub_blocks << " sub-blocks per layer, merged every "
      << model.bp.sync_every << " layers\n";
  else if (plan.group > 1)
    s << "strategy: tensor parallel, SPD drops " << plan.dropped_layers() << "/" << model.n_layers
      << " attention syncs (layers " << layer_list(plan.spd_drop) << ")\n";
  s << "sync points per forward pass: " << plan.syncs_per_pass(model) << " all-reduces (TP baseline "
    << (plan.group == 1 ? 0 : 2 * model.n_layers) << ")\n";
  double tokens_total = 0;
  // One rank per replica: its first stage's rank 0 (every token passes through it).
  for (int r = 0; r < plan.world; r += plan.group * plan.pp) tokens_total += all[r * kReportFields + 5];
  s << "throughput: " << t.rows << " rows in " << t.wall_s << " s, " << tokens_total / std::max(t.wall_s, 1e-9)
    << " tokens/s through the model";
  if (t.task == "generate") s << ", " << t.new_tokens / std::max(t.wall_s, 1e-9) << " new tokens/s";
  s << "\n";
  const char* axis = plan.split == ReplicaSplit::Tensor ? "tp" : "bp";
  for (int r = 0; r < plan.world; ++r) {
    const double* f = &all[r * kReportFields];
    const double per_token = f[5] > 0 ? f[3] / f[5] : 0;
    s << "rank " << r << ": compute " << f[0] << " s, " << axis << " communication " << f[1] << " s ("
      << (f[0] + f[1] > 0 ? 100 * f[1] / (f[0] + f[1]) : 0) << "%), " << static_cast<int64_t>(f[2])
      << " all-reduces over " << static_cast<int64_t>(f[4]) << " passes, " << per_token << " bytes sent per token, "
      << (plan.pp > 1 ? "pipeline sends/waits " + std::to_string(f[13]) + " s, " : std::string())
      << f[6] / 1048576.0 << " MiB of weights (planned memory " << plan.memory_of(r).total() / 1048576.0
      << " MiB), peak RSS " << f[7] << " MiB\n";
  }
  return s.str();
}

}  // namespace lowsync
