#include "planning/planner.h"

#include "io/log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"
#include "io/prompts.h"
#include "planning/calibration.h"
#include "planning/decoupled_candidates.h"
#include "planning/make_plan.h"
#include "planning/profiler.h"
#include "planning/spd_checkpoint.h"

namespace lowsync {

namespace {

bool is_generate(const JobConfig& job) { return job.task == "generate"; }

// A rank's relative speed for the phase the objective is dominated by: full-batch decode products
// for a generate job's throughput, single-sequence decode for its latency, prefill products for
// score and embed.
double phase_rate(const RankProfile& r, const JobConfig& job) {
  if (!is_generate(job)) return r.layers.prefill;
  return job.plan.objective == "latency" ? r.layers.decode_one : r.layers.decode_batch;
}

// Relative speed of each rank of a replica (averaged over replicas); empty when the ranks are
// within 10% of each other, where even shares are as good.
std::vector<double> replica_speeds(const Profile& profile, const JobConfig& job, int group, int stages_times_dp) {
  std::vector<double> speed(group, 0.0);
  for (int d = 0; d < stages_times_dp; ++d)
    for (int r = 0; r < group; ++r) speed[r] += phase_rate(profile.ranks[d * group + r], job) / stages_times_dp;
  const auto [lo, hi] = std::minmax_element(speed.begin(), speed.end());
  if (*lo <= 0 || *hi / *lo < 1.1) return {};
  return speed;
}

std::string speeds_label(const std::vector<double>& speeds) {
  if (speeds.empty()) return "even";
  std::ostringstream s;
  const double top = *std::max_element(speeds.begin(), speeds.end());
  s << "speed-proportional (";
  for (size_t r = 0; r < speeds.size(); ++r) s << (r ? ":" : "") << std::round(100 * speeds[r] / top) / 100;
  s << ")";
  return s.str();
}

double objective_value(const Candidate& c, const JobConfig& job) {
  return job.plan.objective == "latency" ? -c.predicted.sequence_latency_s : c.predicted.rows_per_s;
}

}  // namespace

Workload workload_of(const JobConfig& job, const ModelConfig& model) {
  Workload w;
  w.new_tokens = is_generate(job) ? job.generate.max_new_tokens : 0;
  try {
    const PromptReader in(job.input, model.vocab, job.task == "score");
    double tokens = 0, targets = 0;
    for (int64_t r = 0; r < in.rows(); ++r) {
      tokens += in.length(r) + (job.task == "score" ? std::max<int64_t>(in.target_length(r) - 1, 0) : 0);
      if (job.task == "score") targets += in.target_length(r);
    }
    if (in.rows() > 0) w.prompt_tokens = std::max(1, static_cast<int>(std::lround(tokens / in.rows())));
    if (in.rows() > 0 && job.task == "score") w.scored_tokens = std::max(1, static_cast<int>(std::lround(targets / in.rows())));
  } catch (const std::exception&) {
    // No readable input yet (`lowsync plan` ahead of the data): keep the default prompt length.
  }
  w.batch_sequences = std::max(1, std::min(job.batch.max_sequences, job.batch.max_tokens / w.prompt_tokens));
  w.gather_rows = split_head_gathers_rows(job);
  return w;
}

PlannerResult enumerate_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                                   const Workload& work, const MemoryBudget& memory) {
  const int world = profile.world;
  const PlanLimits limits = limits_of(job);
  PlannerResult result;

  // SPD drop sets and compressed syncs are offered only from a calibration, within the job's
  // accuracy budget: without one the planner changes nothing about the model's function.
  std::unique_ptr<Calibration> cal;
  if (!job.parallel.spd.from.empty()) cal = std::make_unique<Calibration>(Calibration::load(job.parallel.spd.from));

  // A pipeline's micro-batch count, unless the job (or its plan file) fixes it: the cost model's best.
  auto choose_count = [&](Candidate& c) {
    if (c.plan.pp < 2 || job.parallel.micro_batches != 0) return;
    c.micro_batches = choose_micro_batches(c.plan, model, profile, work);
    c.plan.micro_batches = c.micro_batches.chosen;
  };
  auto add = [&](Candidate c, bool choose_micro_batches_here = true) {
    if (choose_micro_batches_here) choose_count(c);
    for (int w = 0; w < world; ++w)
      if (profile.ranks[w].usable_memory_bytes > 0 &&
          c.plan.memory_of(w).total() > profile.ranks[w].usable_memory_bytes)
        c.fits = false;
    c.predicted = predict(c.plan, model, profile, work);
    result.candidates.push_back(std::move(c));
  };
  for (int group = 1; group <= world; ++group)
  for (int pp = 1; pp * group <= world; ++pp) {
    if (world % (group * pp)) continue;
    const int dp = world / (group * pp);
    if (pp > 1 && (model.bp.enabled() || pp > model.n_layers)) continue;  // pipelines: ordinary models
    const ReplicaSplit split = model.bp.enabled() ? ReplicaSplit::Block : ReplicaSplit::Tensor;
    if (split == ReplicaSplit::Block && group > model.bp.sub_blocks) continue;
    if (split == ReplicaSplit::Tensor && group > model.n_heads) continue;
    std::vector<std::vector<double>> speed_sets = {{}};
    if (group > 1) {
      const std::vector<double> uneven = replica_speeds(profile, job, group, dp * pp);
      if (!uneven.empty()) speed_sets.push_back(uneven);
    }
    std::vector<std::vector<int>> drop_sets = {{}};
    const SpdCheckpoint& recovered = model.spd_checkpoint;
    if (recovered.present()) {
      // A checkpoint recovered for SPD runs only as it was recovered: its tp, shares and drop set
      // (check_spd_checkpoint below drops the other shares). No calibration applies to it.
      if (split != ReplicaSplit::Tensor || group != recovered.tp || pp != 1) continue;
      drop_sets = {recovered.drop};
    } else if (cal && split == ReplicaSplit::Tensor && group == cal->tp && group > 1) {
      const std::vector<int> within = cal->drop_within(job.parallel.spd.max_kl >= 0 ? job.parallel.spd.max_kl : cal->max_kl,
                                                       job.parallel.spd.min_top1 >= 0 ? job.parallel.spd.min_top1 : cal->min_top1);
      if (!within.empty()) drop_sets.push_back(within);
    }
    // The output head whole on every rank, split over the group, or both to compare (split_head auto).
    std::vector<bool> head_splits = {job.parallel.split_head == SplitHead::On};
    if (job.parallel.split_head == SplitHead::Auto && group > 1 && model.is_decoder() && job.backend == "cpu")
      head_splits = {false, true};
    for (const auto& speeds : speed_sets)
      for (const auto& dropped : drop_sets)
      for (const bool split_head : head_splits) {
        Candidate c;
        std::vector<bool> drop(model.n_layers, false);
        for (int l : dropped) drop[l] = true;
        try {
          c.plan = make_plan(model, limits, world, split, group, dp, speeds, drop, "planner",
                             {pp, {}, job.parallel.micro_batches}, memory, split_head);
          c.plan.sync_dtype = job.parallel.sync_dtype;  // an accuracy choice the job makes, as its SPD budget
          check_spd_checkpoint(model, c.plan, job.path);
        } catch (const UserError&) {
          continue;  // a grid this model cannot take (e.g. more ranks than sub-blocks)
        }
        if (recovered.present()) {
          c.kl = c.top1 = std::nan("");  // recovered, not a calibration prefix: unknown here
        } else if (!dropped.empty()) {
          c.kl = cal->prefix[dropped.size() - 1].kl;
          c.top1 = cal->prefix[dropped.size() - 1].top1;
        }
        c.label = (pp > 1 ? "pp=" + std::to_string(pp) + " " : std::string()) + split_name(split) + "=" +
                  std::to_string(group) + " dp=" + std::to_string(dp);
        if (group > 1) c.label += " " + speeds_label(speeds);
        if (!dropped.empty()) c.label += ", SPD " + std::to_string(dropped.size()) + "/" + std::to_string(model.n_layers);
        if (c.plan.head_split()) c.label += ", head split";
        // Compressed syncs from the calibration, within the budget, with every layer synced (the
        // calibration measured them so; with a drop set on top their cost is not measured).
        if (cal && cal->sync_dtypes.size() == 2 && dropped.empty() && c.plan.group == cal->tp &&
            job.parallel.sync_dtype == SyncDType::F32) {
          const double max_kl = job.parallel.spd.max_kl >= 0 ? job.parallel.spd.max_kl : cal->max_kl;
          const double min_top1 = job.parallel.spd.min_top1 >= 0 ? job.parallel.spd.min_top1 : cal->min_top1;
          for (int i = 0; i < 2; ++i) {
            const LayerSensitivity& s = cal->sync_dtypes[i];
            if (s.kl > max_kl || s.top1 < min_top1) continue;
            Candidate z = c;
            z.plan.sync_dtype = i == 0 ? SyncDType::BF16 : SyncDType::Q8;
            z.kl = s.kl;
            z.top1 = s.top1;
            z.label += std::string(", syncs ") + sync_dtype_name(z.plan.sync_dtype);
            add(std::move(z));
          }
        }
        add(std::move(c));
      }
  }
  // The plan the job itself states (its parallel keys or a plan file), when it states one: so that
  // `lowsync plan` also predicts what the user asked for, and benchmarks can time any plan.
  const bool states_plan = !job.parallel.auto_plan &&
                           (job.parallel.group() > 1 || job.parallel.dp != 1 || job.parallel.pp > 1 ||
                            !job.parallel.plan.empty() ||
                            !job.parallel.spd.drop.empty() || !job.parallel.spd.from.empty());
  if (states_plan) {
    Candidate c;
    c.plan = plan_from_job(job, model, world, memory);
    if (job.parallel.plan.empty()) choose_count(c);  // before the label, which names the count
    c.label = "job's plan: " + c.plan.describe();
    if (c.plan.dropped_layers() > 0) c.kl = c.top1 = std::nan("");  // not from a calibration prefix: unknown
    add(std::move(c), false);
  }
  return result;
}

PlannerResult plan_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                              const Workload& work, const MemoryBudget& memory) {
  const int world = profile.world;
  PlannerResult result = enumerate_candidates(job, model, profile, work, memory);
  add_decoupled_candidates(job, model, profile, work, memory, result);  // parallel.decoupled.from

  for (size_t i = 0; i < result.candidates.size(); ++i) {
    const Candidate& c = result.candidates[i];
    if (!c.fits) continue;
    if (result.chosen < 0 || objective_value(c, job) > objective_value(result.candidates[result.chosen], job))
      result.chosen = static_cast<int>(i);
  }
  if (result.candidates.empty() && model.spd_checkpoint.present())
    throw UserError(job.path + ": " + model.dir + " was recovered for Sync-Point Drop at tp = " +
                    std::to_string(model.spd_checkpoint.tp) + " (config.json 'lowsync_spd') and runs only so; no plan of " +
                    std::to_string(world) + " ranks has a tp group of " + std::to_string(model.spd_checkpoint.tp) +
                    " with its shares" + (world % model.spd_checkpoint.tp ? " (the rank count is no multiple of it)" : ""));
  if (result.candidates.empty())
    throw UserError(job.path + ": memory.limit of " +
                    (memory.rank_limits.empty() ? std::to_string(memory.limit >> 20) + " MiB" : std::string("these ranks")) +
                    " is below what every plan of " + std::to_string(world) + " ranks needs with every layer streamed" +
                    (memory.pool == MemoryPool::Peer ? " (or has no rank with room for a peer's streamed layers)" : "") +
                    "; raise it, lower the batch limits, or add ranks");
  if (result.chosen < 0) {
    int64_t need = INT64_MAX, have = INT64_MAX;
    for (const Candidate& c : result.candidates) {
      int64_t most = 0;
      for (const RankMemory& m : c.plan.memory) most = std::max(most, m.total());
      need = std::min(need, most);
    }
    for (const RankProfile& r : profile.ranks) have = std::min(have, r.usable_memory_bytes);
    throw UserError(job.path + ": the job fits on no plan of " + std::to_string(world) + " ranks: the smallest plan needs " +
                    std::to_string(need >> 20) + " MiB on a rank, and the smallest rank has " + std::to_string(have >> 20) +
                    " MiB usable; lower batch.max_tokens / batch.max_sequences or add ranks");
  }
  Candidate& best = result.candidates[result.chosen];
  std::ostringstream why;
  why << "planner (" << job.plan.objective << "): fastest predicted of " << result.candidates.size() << " candidates";
  // How far ahead of the best other candidate that fits (> 1: better).
  double margin = 0;
  for (size_t i = 0; i < result.candidates.size(); ++i) {
    const Candidate& c = result.candidates[i];
    if (static_cast<int>(i) == result.chosen || !c.fits) continue;
    const double m = job.plan.objective == "latency" ? c.predicted.sequence_latency_s / best.predicted.sequence_latency_s
                                                     : best.predicted.rows_per_s / c.predicted.rows_per_s;
    margin = margin == 0 ? m : std::min(margin, m);
  }
  if (margin > 0) why << ", " << std::round(100 * margin) / 100 << "x the next";
  if (best.checkpoint >= 0) why << "; runs the decoupled checkpoint " << result.checkpoints[best.checkpoint].dir;
  best.plan.chosen_by = why.str();
  result.why = why.str();
  return result;
}

std::string planner_table(const PlannerResult& result, const JobConfig& job, const ModelConfig& model) {
  std::ostringstream s;
  char line[512];
  const bool gen = is_generate(job);
  std::snprintf(line, sizeof line, "  %-44s %11s %11s %9s %10s %5s %8s %6s %12s\n", "candidate", "prefill ms",
                gen ? "decode ms" : "", "B/token", "MiB/rank", "fits", "KL", "top-1",
                job.plan.objective == "latency" ? "latency s" : "rows/s");
  s << line;
  for (size_t i = 0; i < result.candidates.size(); ++i) {
    const Candidate& c = result.candidates[i];
    int64_t most = 0;
    for (const RankMemory& m : c.plan.memory) most = std::max(most, m.total());
    const double value = job.plan.objective == "latency" ? c.predicted.sequence_latency_s : c.predicted.rows_per_s;
    char decode[32] = "";
    if (gen) std::snprintf(decode, sizeof decode, "%.2f", 1e3 * c.predicted.decode_step_s);
    std::snprintf(line, sizeof line, "%c %-44s %11.2f %11s %9.0f %10.0f %5s %8.3g %6.3f %12.4g\n",
                  static_cast<int>(i) == result.chosen ? '*' : ' ', c.label.c_str(), 1e3 * c.predicted.prefill_pass_s,
                  decode,
                  c.predicted.bytes_per_token, most / 1048576.0, c.fits ? "yes" : "no", c.kl, c.top1, value);
    s << line;
    if (!c.micro_batches.compared.empty()) s << "      micro-batches " << describe(c.micro_batches) << "\n";
  }
  for (const std::string& r : result.refused) s << "  refused (parallel.decoupled.budget): " << r << "\n";
  s << "  prefill: one pass of the batch; decode: one step of the batch; B/token: all-reduce (and split-head "
       "all-gather) bytes a rank sends per token; micro-batches: a pipeline's count (parallel.micro_batches: auto) "
       "and the rows/s predicted with each count compared; * = chosen ("
    << result.why << ")\n";
  (void)model;
  return s.str();
}

std::string candidates_json(const PlannerResult& result, const ModelConfig& job_model) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < result.candidates.size(); ++i) {
    const Candidate& c = result.candidates[i];
    int64_t most = 0;
    for (const RankMemory& m : c.plan.memory) most = std::max(most, m.total());
    const ModelConfig& model = result.model_of(c, job_model);  // the job's, or a decoupled checkpoint's
    out.push_back({{"label", c.label}, {"chosen", static_cast<int>(i) == result.chosen}, {"fits", c.fits},
                   {"model", model.dir}, {"kl", c.kl}, {"top1", c.top1}, {"cosine", c.cosine},
                   {"prefill_pass_s", c.predicted.prefill_pass_s},
                   {"decode_step_s", c.predicted.decode_step_s}, {"decode_step_one_s", c.predicted.decode_step_one_s},
                   {"compute_s", c.predicted.compute_s}, {"comm_s", c.predicted.comm_s},
                   {"bytes_per_token", c.predicted.bytes_per_token}, {"rows_per_s", c.predicted.rows_per_s},
                   {"sequence_latency_s", c.predicted.sequence_latency_s}, {"memory_per_rank_bytes", most},
                   {"plan", c.plan.describe()}, {"plan_yaml", c.plan.to_yaml(model)}});
    if (!c.micro_batches.compared.empty()) {
      nlohmann::json compared = nlohmann::json::array();
      for (const MicroBatchOption& o : c.micro_batches.compared)
        compared.push_back({{"count", o.count}, {"rows_per_s", o.rows_per_s}});
      out.back()["micro_batches"] = {{"chosen", c.micro_batches.chosen}, {"compared", compared}};
    }
  }
  return out.dump(1);
}

Profile job_profile(const JobConfig& job, const ModelConfig& model, Communicator& world, Backend& backend) {
  // Rank 0 reads the profile if it fits this world and model; otherwise every rank measures.
  Profile profile;
  int64_t have = 0;
  world.agree([&] {
    if (world.rank() != 0 || !std::filesystem::exists(job.plan.profile)) return;
    Profile p = Profile::load(job.plan.profile);
    if (p.world == world.size() && p.model == model.dir && static_cast<int>(p.ranks.size()) == p.world) {
      profile = std::move(p);
      have = 1;
    }
  });
  world.broadcast(&have, sizeof have, 0);
  if (!have) {
    log::info("lowsync: profiling %d rank(s) (no usable %s)", world.size(), job.plan.profile.c_str());
    world.agree([&] {
      profile = measure_profile(model, backend, world, std::min(job.batch.max_tokens, 512), job.batch.max_sequences,
                                job.threads, 15.0);
      if (world.rank() == 0) profile.save(job.plan.profile);
    });
  }

  return profile;
}

Plan choose_plan(const JobConfig& job, const ModelConfig& model, Communicator& world, Backend& backend,
                 const MemoryBudget& memory, const std::string& candidates_out) {
  const Profile profile = job_profile(job, model, world, backend);

  // Rank 0 plans and hands the plan to every rank as YAML, so that all run the same one.
  std::string yaml;
  world.agree([&] {
    if (world.rank() != 0) return;
    const auto t0 = std::chrono::steady_clock::now();
    const PlannerResult result = plan_candidates(job, model, profile, workload_of(job, model), memory);
    const double planning_ms = 1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    log::info("lowsync: plan candidates for %s on %d rank(s), objective %s (profile %s; planned in %.1f ms)",
              job.model.c_str(), world.size(), job.plan.objective.c_str(), job.plan.profile.c_str(), planning_ms);
    if (log::printing()) std::fputs(planner_table(result, job, model).c_str(), stdout);
    std::fflush(stdout);
    if (!candidates_out.empty()) {
      std::ofstream f(candidates_out);
      f << candidates_json(result, model);
      if (!f) throw UserError(candidates_out + ": cannot write the candidates");
    }
    std::fflush(stdout);
    const Candidate& best = result.candidates[result.chosen];
    yaml = best.plan.to_yaml(result.model_of(best, model));
  });
  int64_t n = static_cast<int64_t>(yaml.size());
  world.broadcast(&n, sizeof n, 0);
  yaml.resize(n);
  world.broadcast(yaml.data(), n, 0);
  Plan plan;
  world.agree([&] {
    plan = Plan::parse(yaml, "planner");
    complete_parsed_plan(plan, model_of_plan(plan, job, model), world.size(), "planner");
  });
  return plan;
}

}  // namespace lowsync
