#include "jobs/run_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <sstream>

namespace lowsync {

namespace {

// Tokens through the model in this run: one rank per replica, its first stage's rank 0 (every
// token passes through it).
double tokens_through(const Plan& plan, const std::vector<double>& all) {
  double tokens = 0;
  for (int r = 0; r < plan.world; r += plan.group * plan.pp) tokens += all[r * kReportFields + 5];
  return tokens;
}

nlohmann::json per_rank_json(const Plan& plan, const std::vector<double>& all) {
  nlohmann::json out = nlohmann::json::array();
  for (int r = 0; r < plan.world; ++r) {
    const double* f = &all[r * kReportFields];
    out.push_back({{"rank", r}, {"compute_s", f[0]}, {"comm_s", f[1]}, {"allreduces", int64_t(f[2])},
                   {"message_bytes", int64_t(f[3])}, {"wire_bytes", int64_t(f[17])}, {"threads", int64_t(f[18])},
                   {"passes", int64_t(f[4])}, {"tokens", int64_t(f[5])},
                   {"weight_bytes", int64_t(f[6])}, {"peak_rss_mib", f[7]}, {"rss_anon_mib", f[8]},
                   {"planned_memory_bytes", plan.memory_of(r).total()},
                   {"prefill_s", f[9]}, {"prefill_passes", int64_t(f[10])}, {"decode_s", f[11]},
                   {"decode_steps", int64_t(f[12])}, {"stage", plan.stage_of(r)},
                   {"pipeline_s", f[13]}, {"pipeline_bytes", int64_t(f[14])},
                   {"resident_layers", plan.resident_of(r)}, {"streamed_bytes", int64_t(f[15])},
                   {"stream_stall_s", f[16]}, {"memory_pool", memory_pool_name(plan.memory_budget.pool)},
                   {"pool_holder", plan.holder_of(r)},
                   {"peer_fetched_bytes", plan.holder_of(r) >= 0 ? int64_t(f[15]) : int64_t(0)},
                   {"peer_held_bytes", plan.memory_of(r).pooled}, {"peer_served_bytes", int64_t(f[19])}});
  }
  return out;
}

// Every segment of the file, this run last. Earlier ones come from the previous report; a report
// written before segments were kept is one segment; rows done that no report covers were written
// by a run killed before it could report (SIGKILL, a crash, a node lost).
nlohmann::json all_segments(const Plan& plan, const std::vector<double>& all, const RunTotals& t) {
  nlohmann::json segments = nlohmann::json::array();
  if (!t.previous_json.empty()) {
    const nlohmann::json prev = nlohmann::json::parse(t.previous_json, nullptr, false);
    if (prev.is_object() && prev.contains("segments") && prev["segments"].is_array())
      segments = prev["segments"];
    else if (prev.is_object() && prev.contains("rows"))
      segments.push_back({{"first_row", 0}, {"rows", prev.value("rows", int64_t(0))},
                          {"wall_s", prev.value("wall_s", 0.0)}, {"new_tokens", prev.value("new_tokens", int64_t(0))},
                          {"ended", "complete"}, {"plan", prev.value("plan", std::string())}});
  }
  int64_t covered = 0;
  for (const auto& s : segments) covered = std::max(covered, s.value("first_row", int64_t(0)) + s.value("rows", int64_t(0)));
  if (covered < t.first_row)
    segments.push_back({{"first_row", covered}, {"rows", t.first_row - covered}, {"ended", "killed (no report)"}});
  segments.push_back({{"first_row", t.first_row}, {"rows", t.rows}, {"wall_s", t.wall_s}, {"new_tokens", t.new_tokens},
                      {"tokens", tokens_through(plan, all)}, {"ended", t.ended}, {"plan", plan.describe()},
                      {"per_rank", per_rank_json(plan, all)}});
  return segments;
}

// score: the mean negative log-likelihood per scored token (0 when none was scored).
double mean_nll(const RunTotals& t) { return t.scored_tokens > 0 ? -t.sum_logprob / double(t.scored_tokens) : 0.0; }

struct FileTotals {
  int64_t rows = 0;           // every segment's
  int64_t timed_rows = 0;     // rows of segments with figures
  double wall_s = 0, tokens = 0;
  int64_t new_tokens = 0;
};

FileTotals file_totals(const nlohmann::json& segments) {
  FileTotals f;
  for (const auto& s : segments) {
    f.rows += s.value("rows", int64_t(0));
    if (!s.contains("wall_s")) continue;
    f.timed_rows += s.value("rows", int64_t(0));
    f.wall_s += s.value("wall_s", 0.0);
    f.tokens += s.value("tokens", 0.0);
    f.new_tokens += s.value("new_tokens", int64_t(0));
  }
  return f;
}

std::string layer_list(const std::vector<bool>& drop) {
  std::string s;
  for (size_t l = 0; l < drop.size(); ++l)
    if (drop[l]) s += (s.empty() ? "" : ",") + std::to_string(l);
  return s.empty() ? "none" : s;
}

std::string layer_list(const std::vector<int>& layers) {
  std::string s;
  for (int l : layers) s += (s.empty() ? "" : ",") + std::to_string(l);
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
  j["head_split"] = plan.head_split();
  j["plan"] = plan.describe();
  j["plan_chosen_by"] = plan.chosen_by;
  j["weights_dtype"] = weights_dtype_name(plan.limits.weights);
  j["plan_yaml"] = plan.to_yaml(model);
  const nlohmann::json segments = all_segments(plan, all, t);
  const FileTotals f = file_totals(segments);
  j["wall_s"] = f.wall_s;
  j["rows"] = f.rows;
  j["new_tokens"] = f.new_tokens;
  j["tokens"] = f.tokens;
  if (t.task == "score") {
    j["scored_tokens"] = t.scored_tokens;
    j["mean_nll"] = mean_nll(t);
    j["perplexity"] = std::exp(mean_nll(t));
  }
  j["per_rank"] = per_rank_json(plan, all);
  if (!t.runtime_json.empty()) j["runtime_plan"] = nlohmann::json::parse(t.runtime_json);
  if (!t.micro_batch_json.empty()) j["micro_batch_plan"] = nlohmann::json::parse(t.micro_batch_json);
  j["segments"] = segments;
  return j.dump();
}

std::string run_report(const Plan& plan, const ModelConfig& model, const std::vector<double>& all, const RunTotals& t) {
  std::ostringstream s;
  s << "plan: " << plan.describe() << " (" << plan.world << " ranks; chosen by " << plan.chosen_by << ")\n";
  if (plan.split == ReplicaSplit::Block)
    s << "strategy: decoupled model of " << model.bp.sub_blocks << " sub-blocks per layer, merged every "
      << model.bp.sync_every << " layers"
      << (model.bp.merge == DecoupledSpec::Merge::Mean ? " (mean of the streams)" : "")
      << (model.bp.coupled.empty() ? "" : "; coupled (tensor-parallel) layers " + layer_list(model.bp.coupled)) << "\n";
  else if (plan.group > 1)
    s << "strategy: tensor parallel, SPD drops " << plan.dropped_layers() << "/" << model.n_layers
      << " attention syncs (layers " << layer_list(plan.spd_drop) << ")\n";
  s << "sync points per forward pass: " << plan.syncs_per_pass(model) << " all-reduces (TP baseline "
    << (plan.group == 1 ? 0 : 2 * model.n_layers) << ")";
  if (plan.head_split()) s << ", + 1 all-gather per pass through the split output head";
  s << "\n";
  const nlohmann::json segments = all_segments(plan, all, t);
  const FileTotals f = file_totals(segments);
  s << "throughput: " << f.rows << " rows";
  if (segments.size() > 1) {
    s << " (the whole file, " << segments.size() << " runs";
    if (f.timed_rows < f.rows) s << "; time and rates over the " << f.timed_rows << " rows of runs that reported";
    s << ")";
  }
  s << " in " << f.wall_s << " s, " << f.tokens / std::max(f.wall_s, 1e-9) << " tokens/s through the model";
  if (t.task == "generate") s << ", " << f.new_tokens / std::max(f.wall_s, 1e-9) << " new tokens/s";
  s << "\n";
  s << t.runtime_text;
  s << t.micro_batch_text;
  if (t.task == "score")
    s << "perplexity: " << std::exp(mean_nll(t)) << " (mean NLL " << mean_nll(t) << " nats over " << t.scored_tokens
      << " scored tokens)\n";
  if (segments.size() > 1) {
    for (size_t i = 0; i < segments.size(); ++i) {
      const auto& g = segments[i];
      const int64_t first = g.value("first_row", int64_t(0)), rows = g.value("rows", int64_t(0));
      s << "run " << i + 1 << ": ";
      if (rows > 0)
        s << "rows " << first << "-" << first + rows - 1 << " (" << rows << ")";
      else
        s << "no rows";
      if (g.contains("wall_s")) s << " in " << g.value("wall_s", 0.0) << " s";
      s << ", " << g.value("ended", std::string("?")) << (i + 1 == segments.size() ? " (this run)" : "") << "\n";
    }
    s << "per rank, this run:\n";
  }
  const char* axis = plan.split == ReplicaSplit::Tensor ? "tp" : "bp";
  if (plan.group > 1)
    s << "bytes per token: the all-reduced message, and what this rank sends of it on the wire (Open MPI 4.1 "
         "tuned's algorithm for the message size: ring or Rabenseifner 2(P-1)/P x, recursive doubling log2(P) x)\n";
  for (int r = 0; r < plan.world; ++r) {
    const double* f = &all[r * kReportFields];
    const double message = f[5] > 0 ? f[3] / f[5] : 0, wire = f[5] > 0 ? f[17] / f[5] : 0;
    s << "rank " << r << ": " << static_cast<int64_t>(f[18]) << " threads, compute " << f[0] << " s, " << axis
      << " communication " << f[1] << " s (" << (f[0] + f[1] > 0 ? 100 * f[1] / (f[0] + f[1]) : 0) << "%), "
      << static_cast<int64_t>(f[2]) << " all-reduces over " << static_cast<int64_t>(f[4]) << " passes, " << message
      << " bytes all-reduced per token (" << wire << " sent on the wire), "
      << (plan.pp > 1 ? "pipeline sends/waits " + std::to_string(f[13]) + " s, " : std::string())
      << (f[15] > 0 ? std::to_string(plan.layers_of(r).count - plan.resident_of(r)) + " layers streamed" +
                          (plan.holder_of(r) >= 0 ? " from rank " + std::to_string(plan.holder_of(r)) + "'s memory (" +
                                                        std::to_string(f[15] / 1048576.0) + " MiB fetched, "
                                                  : " (" + std::to_string(f[15] / 1048576.0) + " MiB read, ") +
                          std::to_string(f[16]) + " s waited), "
                    : std::string())
      << (plan.memory_of(r).pooled > 0 ? "holds " + std::to_string(plan.memory_of(r).pooled / 1048576.0) +
                                             " MiB of peers' layers (" + std::to_string(f[19] / 1048576.0) + " MiB sent), "
                                       : std::string())
      << f[6] / 1048576.0 << " MiB of weights, matrices in " << weights_dtype_name(plan.limits.weights)
      << " (planned memory " << plan.memory_of(r).total() / 1048576.0
      << " MiB), peak RSS " << f[7] << " MiB\n";
  }
  return s.str();
}

}  // namespace lowsync
