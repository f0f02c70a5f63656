#include "jobs/runtime_tail.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"
#include "io/log.h"
#include "jobs/continuous_generate.h"
#include "jobs/make_backend.h"
#include "planning/cost_model.h"
#include "planning/make_plan.h"
#include "planning/planner.h"

namespace lowsync {

namespace {

// LOWSYNC_RUNTIME_SWITCH_AT=B: switch at batch B of the run whatever the prediction (tests: rows
// computed in both modes); -1 when unset.
int64_t forced_switch() {
  const char* s = std::getenv("LOWSYNC_RUNTIME_SWITCH_AT");
  return s && *s ? std::atoll(s) : -1;
}

// LOWSYNC_RUNTIME_HAND_OUT_ROWS=N: every dp hand-out at most N rows whatever the prediction (tests:
// batches cut between replicas); -1 when unset.
int64_t forced_hand_out() {
  const char* s = std::getenv("LOWSYNC_RUNTIME_HAND_OUT_ROWS");
  return s && *s ? std::atoll(s) : -1;
}

// What an all-reduce over the tp group costs now: of one token's activation row and of 64 rows,
// each the mean of back-to-back calls (every rank the same count), as latency + seconds per token.
// The mean, not the median: on a shared machine a sync waits whenever another rank of the group is
// not scheduled, rarely but for milliseconds, and a tp pass pays that at every sync (the median of
// a few calls, as the profile measured another time, sees none of it). The count is cut where the
// calls are slow (sync_probe_calls on rank 0's last warm-up call, sent to every rank).
void time_syncs(Communicator& tp, int hidden, TensorParallelCosts& out) {
  auto mean_seconds = [&](int tokens, int most) {
    std::vector<float> x(static_cast<size_t>(tokens) * hidden, 1.f);
    for (int i = 0; i < 3; ++i) tp.all_reduce(x.data(), static_cast<int64_t>(x.size()));  // warm-up
    const auto w0 = std::chrono::steady_clock::now();
    tp.all_reduce(x.data(), static_cast<int64_t>(x.size()));  // the last warm-up call, timed
    int calls = sync_probe_calls(std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count(), most);
    tp.broadcast(&calls, sizeof calls, 0);  // rank 0's count: every rank must make the same calls
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) tp.all_reduce(x.data(), static_cast<int64_t>(x.size()));
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / calls;
  };
  const double one = mean_seconds(1, 64), many = mean_seconds(64, 32);
  out.sync_s_per_token = std::max(0.0, (many - one) / 63);
  out.sync_latency_s = std::max(0.0, one - out.sync_s_per_token);
  tp.counters() = {};  // a probe, not the job's syncs
}

// The mean seconds of 3 decode passes of one row through `model` (after one that warms the caches
// up; the mean, not the fastest: a tp pass's waits for a descheduled rank are what is looked for).
// The row is one token at position 0: the products and the head are a real step's. Collective
// over the model's tp group.
double time_one_row_passes(Transformer& model) {
  KVCache cache = model.make_cache(1);
  BatchLayout layout;
  layout.add(1, 0, 0);
  const std::vector<int32_t> tokens{0};
  const std::vector<int64_t> last{0};
  double total = 0;
  for (int i = 0; i < 4; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor logits = model.logits(model.forward(tokens, layout, cache), last);
    if (i > 0) total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return total / 3;
}

nlohmann::json pass_json(const PassCost& c) {
  return {{"fixed_s", c.fixed}, {"per_row_s", c.per_row}, {"per_prompt_token_s", c.per_token}};
}

}  // namespace

std::unique_ptr<RuntimeTail> make_runtime_tail(const JobConfig& job, const ModelConfig& model, const Plan& plan,
                                               Communicator& world, Backend& backend, Transformer& whole,
                                               const PromptReader& input, const std::vector<Batch>& batches) {
  auto t = std::make_unique<RuntimeTail>();
  t->batches = batches;
  world.agree([&] {
    const std::string where = job.path + ": plan.runtime";
    if (plan.split != ReplicaSplit::Tensor || plan.group != 1 || plan.pp != 1 || plan.dp < 2)
      throw UserError(where + " turns a data-parallel job's tail tensor-parallel, so it needs replicas of one rank "
                      "each, at least 2 (parallel: {dp: auto}); the plan is " + plan.describe());
    if (job.backend != "cpu")
      throw UserError(where + " needs backend: cpu (the tp group slices the fp32 weights each rank holds)");
    if (backend.weight_dtype() != DType::F32)
      throw UserError(where + " needs fp32 weights (the tp group copies column slices of the weights each rank "
                      "holds); set weights.dtype: fp32");
    if (model.bp.enabled())
      throw UserError(where + ": " + job.model + " is a decoupled model; the tp tail needs an ordinary one");
    if (plan.resident_of(world.rank()) < model.n_layers)
      throw UserError(where + " needs every layer held on every rank; memory.limit streams some");
    t->plan = make_plan(model, limits_of(job), world.size(), ReplicaSplit::Tensor, world.size(), 1, {}, {}, where);
    t->plan.chosen_by = "the runtime planner (the job's tail)";
  });
  t->groups = std::make_unique<ParallelGroups>(ParallelGroups::make(world.size(), 1, 1, "tp"));
  t->groups->tp.set_sync_wait(resolve_sync_wait(job, world));  // `parallel.sync_wait: auto` (collective)
  const auto t0 = std::chrono::steady_clock::now();
  world.agree([&] {
    t->model = std::make_unique<Transformer>(whole, TensorParallelGroup(&t->groups->tp, &backend, plan.sync_dtype),
                                             t->plan.share_of(world.rank()));
  });
  TensorParallelCosts tp_costs;
  tp_costs.syncs_per_pass = t->plan.syncs_per_pass(model);
  time_syncs(t->groups->tp, model.hidden, tp_costs);
  // One-row passes side by side: every rank its whole model at once (as the replicas run), then the tp group.
  world.barrier();
  const double dp_one_s = time_one_row_passes(whole);
  world.barrier();
  const double tp_one_s = time_one_row_passes(*t->model);
  t->groups->tp.counters() = {};  // not the job's syncs
  t->setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The cost model's priors, on the job's profile: one replica's pass, and what a tp rank computes
  // of it (plus the waits the one-row passes showed); the job's own passes correct them as it runs.
  const Profile profile = job_profile(job, model, world, backend);
  world.agree([&] {
    if (world.rank() != 0) return;
    const Workload w = workload_of(job, model);
    const Prediction dp = predict(plan, model, profile, w), tp = predict(t->plan, model, profile, w);
    tp_costs.compute_ratio = tp_compute_ratio(dp, tp);
    const double syncs = tp_costs.syncs_per_pass;
    const double model_tp_one_s = tp_costs.compute_ratio * dp_one_s + syncs * (tp_costs.sync_latency_s + tp_costs.sync_s_per_token);
    tp_costs.wait_s = std::max(0.0, tp_one_s - model_tp_one_s);
    t->timed_dp_one_s = dp_one_s;
    t->timed_tp_one_s = tp_one_s;
    const PassCost prior = pass_cost_of(dp, w);
    t->planner = std::make_unique<RuntimePlanner>(plan.dp, job.batch.max_sequences, prior, tp_costs, forced_switch(),
                                                forced_hand_out());
    log::info("lowsync: runtime plan: the cost model's replica pass %.1f ms + %.2f ms per row; a tp rank computes "
              "%.2f of it, plus %d syncs of %.3f ms (timed), plus %.1f ms of waits (one-row passes timed: dp %.1f ms, tp "
              "%.1f ms); setup %.2f s",
              1e3 * prior.fixed, 1e3 * prior.per_row, tp_costs.compute_ratio, tp_costs.syncs_per_pass,
              1e3 * tp_costs.sync_latency_s, 1e3 * tp_costs.wait_s, 1e3 * dp_one_s, 1e3 * tp_one_s, t->setup_s);
    for (const Batch& b : batches)
      for (int64_t r = b.first_row; r < b.end_row; ++r) {
        RowsWork row;
        row.add(input.length(r), ContinuousGenerator::row_need(model, job.generate, input.length(r)) - input.length(r));
        t->row_work.push_back(row);
      }
  });
  return t;
}

void RuntimeTail::attach(WorkQueue& queue, std::chrono::steady_clock::time_point t0) {
  queue.set_hand_out_rule([this, t0](int64_t next, const std::vector<Batch>& queued) -> int64_t {
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    hand_out_row[next] = queued[next].first_row;
    // The work of batch `next` and of every later one: per batch, and per row (only when the
    // planner looks at hand-out sizes: few rows left).
    const int64_t run_first = batches.front().first_row;
    const bool per_row = planner->sizes_hand_outs(queued.back().end_row - queued[next].first_row);
    std::vector<RowsWork> rest;
    std::vector<std::vector<RowsWork>> rest_rows;
    for (auto b = queued.begin() + next; b != queued.end(); ++b) {
      RowsWork w;
      rest_rows.emplace_back();
      for (int64_t r = b->first_row; r < b->end_row; ++r) {
        w.add(row_work[r - run_first]);
        if (per_row) rest_rows.back().push_back(row_work[r - run_first]);
      }
      rest.push_back(w);
    }
    const size_t known = planner->decisions().size();
    const RuntimeMode mode = planner->decide(next, rest, now);
    if (planner->decisions().size() > known) {
      const RuntimeDecision& d = planner->decisions().back();
      switch_rows.push_back(d.switch_batch >= 0 ? queued[d.switch_batch].first_row : -1);
      char later[96] = "";
      if (switch_rows.back() >= 0)
        std::snprintf(later, sizeof later, ", dp then tp from row %lld %.3f s", static_cast<long long>(switch_rows.back()),
                      d.predicted_switch_s);
      log::info("lowsync: runtime plan at row %lld (%lld rows left): %s; predicted dp %.3f s, tp %.3f s%s (%s)",
                static_cast<long long>(queued[next].first_row), static_cast<long long>(d.rows_left),
                runtime_mode_name(d.chosen), d.predicted_dp_s, d.predicted_tp_s, later, d.why.c_str());
    }
    if (mode == RuntimeMode::TensorParallel) return 0;
    const size_t known_hand_outs = planner->hand_outs().size();
    const Batch& b = queued[next];
    const int64_t rows = per_row ? planner->hand_out_rows(next, rest_rows, now) : b.end_row - b.first_row;
    if (planner->hand_outs().size() > known_hand_outs) {
      const HandOutDecision& h = planner->hand_outs().back();
      log::info("lowsync: runtime plan at row %lld: hand out %lld of %lld rows; predicted %.3f s left, %.3f s with the "
                "whole batch",
                static_cast<long long>(queued[next].first_row), static_cast<long long>(h.rows),
                static_cast<long long>(h.batch_rows), h.predicted_s, h.predicted_whole_s);
    }
    RowsWork handed;
    for (int64_t r = b.first_row; r < b.first_row + rows; ++r) handed.add(row_work[r - run_first]);
    planner->handed_out(next, handed, now);
    return rows;
  });
  queue.set_on_result([this](int64_t batch) { planner->completed(batch); });
}

void RuntimeTail::measured(RuntimeMode mode, const ContinuousGenerator::PassRecord& pass) {
  const auto now = std::chrono::steady_clock::now();
  const double seconds = last_pass_mode == static_cast<int>(mode)
                             ? std::chrono::duration<double>(now - last_pass_end).count()
                             : pass.seconds;
  planner->measured(mode, pass.decoding, pass.prefill_tokens, seconds);
  last_pass_end = now;
  last_pass_mode = static_cast<int>(mode);
}

std::string RuntimeTail::json() const {
  nlohmann::json j;
  nlohmann::json decisions = nlohmann::json::array();
  for (size_t i = 0; i < planner->decisions().size(); ++i) {
    const RuntimeDecision& d = planner->decisions()[i];
    const bool switch_later = switch_rows[i] >= 0;
    decisions.push_back({{"at_s", d.at_s},
                         {"first_row", hand_out_row.at(d.batch)},
                         {"rows_left", d.rows_left},
                         {"chosen", runtime_mode_name(d.chosen)},
                         {"predicted_dp_s", d.predicted_dp_s},
                         {"predicted_tp_s", d.predicted_tp_s},
                         {"predicted_dp_then_tp_s", switch_later ? nlohmann::json(d.predicted_switch_s) : nlohmann::json(nullptr)},
                         {"switch_row", switch_later ? nlohmann::json(switch_rows[i]) : nlohmann::json(nullptr)},
                         {"predicted_s", d.predicted_s()},
                         {"measured_s", d.measured_s},
                         {"dp_pass", pass_json(d.dp_pass)},
                         {"tp_pass", pass_json(d.tp_pass)},
                         {"why", d.why}});
  }
  j["decisions"] = decisions;
  nlohmann::json hand_outs = nlohmann::json::array();
  for (const HandOutDecision& h : planner->hand_outs())
    hand_outs.push_back({{"at_s", h.at_s},
                         {"first_row", hand_out_row.at(h.batch)},
                         {"batch_rows", h.batch_rows},
                         {"rows", h.rows},
                         {"rows_left", h.rows_left},
                         {"predicted_s", h.predicted_s},
                         {"predicted_whole_s", h.predicted_whole_s},
                         {"measured_s", h.measured_s},
                         {"why", h.why}});
  j["hand_outs"] = hand_outs;
  j["evaluations"] = planner->evaluations();
  j["tail_first_row"] = tail_first_row >= 0 ? nlohmann::json(tail_first_row) : nlohmann::json(nullptr);
  j["setup_s"] = setup_s;
  const TensorParallelCosts& c = planner->tp_costs();
  j["tp_costs"] = {{"compute_ratio", c.compute_ratio}, {"syncs_per_pass", c.syncs_per_pass},
                   {"sync_latency_s", c.sync_latency_s}, {"sync_s_per_token", c.sync_s_per_token},
                   {"wait_s", c.wait_s}, {"timed_dp_one_row_s", timed_dp_one_s},
                   {"timed_tp_one_row_s", timed_tp_one_s}, {"prior_dp_pass", pass_json(planner->dp_prior())}};
  const RuntimeDecision& last = planner->last_evaluation();
  if (planner->evaluations() > 0)
    j["last_evaluation"] = {{"first_row", hand_out_row.at(last.batch)}, {"rows_left", last.rows_left},
                            {"chosen", runtime_mode_name(last.chosen)}, {"predicted_dp_s", last.predicted_dp_s},
                            {"predicted_tp_s", last.predicted_tp_s}, {"measured_s", last.measured_s}};
  for (RuntimeMode m : {RuntimeMode::DataParallel, RuntimeMode::TensorParallel}) {
    const PassFit& f = planner->fit(m);
    nlohmann::json p = {{"passes", f.passes()}, {"seconds", f.seconds()}};
    if (f.passes() > 0) p["fit"] = pass_json(m == RuntimeMode::DataParallel ? planner->dp_cost() : planner->tp_cost());
    j[std::string("measured_") + runtime_mode_name(m)] = p;
  }
  return j.dump();
}

std::string RuntimeTail::text() const {
  std::ostringstream s;
  s << "runtime plan: " << planner->evaluations() << " hand-outs decided, " << planner->decisions().size()
    << " decision(s) (remaining time predicted / measured):\n";
  for (size_t i = 0; i < planner->decisions().size(); ++i) {
    const RuntimeDecision& d = planner->decisions()[i];
    s << "  at " << d.at_s << " s, row " << hand_out_row.at(d.batch) << " (" << d.rows_left << " rows left): "
      << runtime_mode_name(d.chosen) << ", predicted " << d.predicted_s() << " s (dp " << d.predicted_dp_s << " s, tp "
      << d.predicted_tp_s << " s";
    if (switch_rows[i] >= 0) s << ", dp then tp from row " << switch_rows[i] << " " << d.predicted_switch_s << " s";
    s << "), measured " << d.measured_s << " s\n";
  }
  for (const HandOutDecision& h : planner->hand_outs())
    s << "  at " << h.at_s << " s, row " << hand_out_row.at(h.batch) << ": handed out " << h.rows << " of "
      << h.batch_rows << " rows (" << h.rows_left << " rows left), predicted " << h.predicted_s << " s (whole batch "
      << h.predicted_whole_s << " s), measured " << h.measured_s << " s\n";
  return s.str();
}

}  // namespace lowsync
