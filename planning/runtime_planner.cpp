#include "planning/runtime_planner.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace lowsync {

const char* runtime_mode_name(RuntimeMode m) { return m == RuntimeMode::DataParallel ? "dp" : "tp"; }

void PassFit::add(int decode_rows, int64_t prefill_tokens, double seconds) {
  ++passes_;
  seconds_ += seconds;
  if (prefill_tokens > 0) {
    prefills_.emplace_back(decode_rows, seconds);
    prefill_tokens_ += static_cast<double>(prefill_tokens);
    return;
  }
  if (decode_rows <= 0) return;
  const double x = decode_rows;
  n_ += 1;
  sx_ += x;
  sy_ += seconds;
  sxx_ += x * x;
  sxy_ += x * seconds;
  min_rows_ = min_rows_ < 0 ? decode_rows : std::min<int64_t>(min_rows_, decode_rows);
  max_rows_ = std::max<int64_t>(max_rows_, decode_rows);
}

PassCost PassFit::cost(const PassCost& prior) const {
  PassCost c = prior;
  if (n_ >= 2 && max_rows_ > min_rows_) {
    // Least squares of seconds = fixed + per_row x rows over the decode-only passes.
    const double slope = (n_ * sxy_ - sx_ * sy_) / (n_ * sxx_ - sx_ * sx_);
    c.per_row = std::max(0.0, slope);
    c.fixed = (sy_ - c.per_row * sx_) / n_;
    if (c.fixed < 0) {  // noise: a line through the origin instead
      c.fixed = 0;
      c.per_row = sxy_ / sxx_;
    }
  } else if (n_ > 0) {
    // One row count measured: the prior's shape, scaled to the measured mean.
    const double predicted = prior.seconds(sx_ / n_, 0);
    const double scale = predicted > 0 ? (sy_ / n_) / predicted : 1;
    c.fixed = prior.fixed * scale;
    c.per_row = prior.per_row * scale;
  }
  if (prefill_tokens_ > 0) {
    // What the prefill passes took beyond their decode rows' share, per prompt token.
    double beyond = 0;
    for (const auto& [rows, seconds] : prefills_) beyond += seconds - (rows > 0 ? c.seconds(rows, 0) : c.fixed);
    c.per_token = std::max(0.0, beyond / prefill_tokens_);
  }
  return c;
}

void RowsWork::add(int64_t prompt, int64_t new_tokens_at_most) {
  rows += 1;
  prompt_tokens += static_cast<double>(prompt);
  new_tokens += static_cast<double>(new_tokens_at_most);
  longest = std::max(longest, static_cast<double>(new_tokens_at_most));
}

void RowsWork::add(const RowsWork& w) {
  rows += w.rows;
  prompt_tokens += w.prompt_tokens;
  new_tokens += w.new_tokens;
  longest = std::max(longest, w.longest);
}

double run_seconds(const PassCost& c, const RowsWork& w, int slots) {
  if (w.rows <= 0) return 0;
  const double filled = std::max(1.0, std::min<double>(slots, w.rows));
  const double steps = std::max(w.new_tokens / filled, w.longest);
  return c.fixed * steps + c.per_row * w.new_tokens + c.per_token * w.prompt_tokens;
}

void QueuedWork::then(const RowsWork& w, int slots) {
  if (w.rows <= 0) return;
  const double start = sum.rows + w.rows <= slots ? 0 : sum.new_tokens / std::max(slots, 1);
  last_end = std::max(last_end, start + w.longest);
  sum.add(w);
}

double QueuedWork::seconds(const PassCost& c, int slots) const {
  if (sum.rows <= 0) return 0;
  const double filled = std::max(1.0, std::min<double>(slots, sum.rows));
  const double steps = std::max(sum.new_tokens / filled, last_end);
  return c.fixed * steps + c.per_row * sum.new_tokens + c.per_token * sum.prompt_tokens;
}

double tp_compute_ratio(const Prediction& dp, const Prediction& tp) {
  return dp.compute_s > 0 && tp.compute_s > 0 ? tp.compute_s / dp.compute_s : 1.0;
}

PassCost pass_cost_of(const Prediction& p, const Workload& work) {
  const double B = std::max(work.batch_sequences, 1);
  PassCost c;
  c.per_row = B > 1 ? std::max(0.0, (p.decode_step_s - p.decode_step_one_s) / (B - 1)) : 0;
  c.fixed = std::max(0.0, p.decode_step_one_s - c.per_row);
  c.per_token = p.prefill_pass_s / (B * std::max(work.prompt_tokens, 1));
  return c;
}

int sync_probe_calls(double call_s, int most, double budget_s) {
  constexpr int kFewest = 4;
  if (!(call_s > 0)) return most;  // too fast to time (or not timed): the full count costs nothing
  const double fit = std::floor(budget_s / call_s);
  return static_cast<int>(std::clamp(fit, static_cast<double>(std::min(kFewest, most)), static_cast<double>(most)));
}

RuntimePlanner::RuntimePlanner(int replicas, int slots, const PassCost& dp_prior, const TensorParallelCosts& tp,
                               int64_t switch_at, int64_t hand_out)
    : replicas_(std::max(replicas, 1)), slots_(std::max(slots, 1)), dp_prior_(dp_prior), tp_(tp),
      switch_at_(switch_at), hand_out_(hand_out) {}

void RuntimePlanner::measured(RuntimeMode mode, int decode_rows, int64_t prefill_tokens, double seconds) {
  fit_[mode == RuntimeMode::DataParallel ? 0 : 1].add(decode_rows, prefill_tokens, seconds);
}

// A tp pass: the dp pass (as fitted so far) with its compute at the tp rank's share (the cost
// model's ratio), plus its syncs, each paying the timed latency and its activation rows, plus the
// waits the timed one-row passes showed.
PassCost RuntimePlanner::tp_predicted() const {
  const PassCost dp = dp_cost();
  const double syncs = tp_.syncs_per_pass;
  return {tp_.compute_ratio * dp.fixed + syncs * tp_.sync_latency_s + tp_.wait_s,
          tp_.compute_ratio * dp.per_row + syncs * tp_.sync_s_per_token,
          tp_.compute_ratio * dp.per_token + syncs * tp_.sync_s_per_token};
}

PassCost RuntimePlanner::tp_cost() const { return fit_[1].cost(tp_predicted()); }

std::vector<RowsWork> RuntimePlanner::held_now(double now_s) const {
  std::vector<std::pair<double, RowsWork>> in_flight;  // (seconds left, the work left)
  for (const auto& [index, f] : in_flight_) {
    const double left_s = std::max(0.0, f.predicted_s - (now_s - f.handed_s));
    if (left_s > 0) in_flight.emplace_back(left_s, f.work.scaled(f.predicted_s > 0 ? left_s / f.predicted_s : 0));
  }
  std::sort(in_flight.begin(), in_flight.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<RowsWork> held(replicas_);
  std::vector<double> held_s(replicas_, 0.0);
  for (const auto& [left_s, work] : in_flight) {
    const size_t r = std::min_element(held_s.begin(), held_s.end()) - held_s.begin();
    held[r].add(work);
    held_s[r] += left_s;
  }
  return held;
}

namespace {

// Adds `w` to the group on which it ends soonest.
void place(std::vector<QueuedWork>& groups, const RowsWork& w, const PassCost& c, int slots) {
  size_t best = 0;
  double best_s = 0;
  for (size_t r = 0; r < groups.size(); ++r) {
    QueuedWork with = groups[r];
    with.then(w, slots);
    const double s = with.seconds(c, slots);
    if (r == 0 || s < best_s) best = r, best_s = s;
  }
  groups[best].then(w, slots);
}

double makespan(const std::vector<QueuedWork>& groups, const PassCost& c, int slots) {
  double end = 0;
  for (const QueuedWork& g : groups) end = std::max(end, g.seconds(c, slots));
  return end;
}

// The tp group's seconds for batches [first, end) of `batches`, run in order.
double tp_seconds(const PassCost& tp, const std::vector<RowsWork>& batches, size_t first, int slots) {
  QueuedWork q;
  for (size_t j = first; j < batches.size(); ++j) q.then(batches[j], slots);
  return q.seconds(tp, slots);
}

}  // namespace

RuntimeMode RuntimePlanner::decide(int64_t next, const std::vector<RowsWork>& batches, double now_s) {
  ++evaluations_;
  if (mode_ == RuntimeMode::TensorParallel) return mode_;
  const PassCost dp = dp_cost(), tp = tp_predicted();
  std::vector<QueuedWork> replicas;
  for (const RowsWork& h : held_now(now_s)) replicas.emplace_back(h);
  const double held_s = makespan(replicas, dp, slots_);
  // tp now: the replicas first finish what they hold, then the tp group runs every batch left.
  const double tp_s = held_s + tp_seconds(tp, batches, 0, slots_);
  // dp: each batch to the replica on which it ends soonest; after batch j, the best switch so far
  // is dp up to there and tp for the batches after it.
  const size_t n = batches.size();
  const size_t first_candidate = n > kSwitchCandidates ? n - kSwitchCandidates : 1;
  double switch_s = -1;
  int64_t switch_batch = -1;
  for (size_t j = 0; j < n; ++j) {
    place(replicas, batches[j], dp, slots_);
    if (j + 1 < n && j + 1 >= first_candidate) {
      const double s = makespan(replicas, dp, slots_) + tp_seconds(tp, batches, j + 1, slots_);
      if (switch_batch < 0 || s < switch_s) switch_s = s, switch_batch = next + static_cast<int64_t>(j) + 1;
    }
  }
  const double dp_s = makespan(replicas, dp, slots_);
  const double not_now_s = switch_batch >= 0 ? std::min(dp_s, switch_s) : dp_s;  // dp now, tp later or never

  RuntimeMode chosen = RuntimeMode::DataParallel;
  char why[320];
  const int64_t rows_left = static_cast<int64_t>(std::accumulate(
      batches.begin(), batches.end(), 0.0, [](double a, const RowsWork& b) { return a + b.rows; }));
  char later[80] = "";  // the best later switch, if there is a later batch
  if (switch_batch >= 0)
    std::snprintf(later, sizeof later, " (dp then tp from batch %lld: %.3g s)", static_cast<long long>(switch_batch), switch_s);
  if (switch_at_ >= 0) {
    chosen = next >= switch_at_ ? RuntimeMode::TensorParallel : RuntimeMode::DataParallel;
    std::snprintf(why, sizeof why, "forced at batch %lld (LOWSYNC_RUNTIME_SWITCH_AT)", static_cast<long long>(switch_at_));
  } else if (tp_s < 0.95 * not_now_s) {  // the switch is one-way: only for a clear gain
    chosen = RuntimeMode::TensorParallel;
    std::snprintf(why, sizeof why, "tp now predicted %.3g s against dp %.3g s%s for the %lld rows left", tp_s, dp_s, later,
                  static_cast<long long>(rows_left));
  } else if (switch_batch >= 0 && switch_s < dp_s) {
    std::snprintf(why, sizeof why, "dp, then tp from batch %lld, predicted %.3g s against dp %.3g s, tp now %.3g s "
                  "for the %lld rows left", static_cast<long long>(switch_batch), switch_s, dp_s, tp_s,
                  static_cast<long long>(rows_left));
  } else {
    std::snprintf(why, sizeof why, "dp predicted %.3g s against tp now %.3g s%s for the %lld rows left", dp_s, tp_s, later,
                  static_cast<long long>(rows_left));
  }
  last_ = {now_s, next, rows_left, chosen, dp_s, tp_s, switch_s, switch_batch, -1, dp, tp, why};
  if (decisions_.empty() || chosen != mode_) decisions_.push_back(last_);
  mode_ = chosen;
  return chosen;
}

double dp_makespan(const PassCost& c, std::vector<RowsWork> held, const std::vector<RowsWork>& hand_out,
                   const std::vector<RowsWork>& later, int slots) {
  if (held.empty()) return 0;
  std::vector<QueuedWork> replicas(held.begin(), held.end());
  RowsWork piece;
  for (const RowsWork& row : hand_out) piece.add(row);
  if (piece.rows > 0) place(replicas, piece, c, slots);
  for (const RowsWork& row : later) place(replicas, row, c, slots);
  return makespan(replicas, c, slots);
}

int64_t RuntimePlanner::hand_out_rows(int64_t next, const std::vector<std::vector<RowsWork>>& rest_rows, double now_s) {
  if (rest_rows.empty()) return 0;
  const int64_t whole = static_cast<int64_t>(rest_rows.front().size());
  int64_t left = 0;
  for (const std::vector<RowsWork>& b : rest_rows) left += static_cast<int64_t>(b.size());
  const bool forced = hand_out_ > 0;
  if (!sizes_hand_outs(left) || whole <= 1 || (forced && hand_out_ >= whole)) return whole;
  const PassCost dp = dp_cost();
  const std::vector<RowsWork> held = held_now(now_s);

  // The rows of batch `next` and of every later one, in order: the first k go out now.
  std::vector<RowsWork> rows(rest_rows.front());
  for (size_t b = 1; b < rest_rows.size(); ++b) rows.insert(rows.end(), rest_rows[b].begin(), rest_rows[b].end());
  auto makespan = [&](int64_t k) {
    return dp_makespan(dp, held, {rows.begin(), rows.begin() + k}, {rows.begin() + k, rows.end()}, slots_);
  };
  const double whole_s = makespan(whole);
  double best_s = whole_s;
  for (int64_t k = whole - 1; k >= 1; --k) best_s = std::min(best_s, makespan(k));
  // A cut needs a clear predicted gain (15%): fuller decode batches and fewer hand-outs otherwise,
  // and the prediction errs by more than a few percent on a shared machine.
  if (!forced && best_s >= 0.85 * whole_s) return whole;
  // The largest size within 1% of the best: as full a decode batch as the balance allows.
  int64_t chosen = 1;
  double chosen_s = best_s;
  for (int64_t k = whole - 1; k >= 1; --k) {
    const double s = makespan(k);
    if (forced ? k == hand_out_ : s <= 1.01 * best_s) {
      chosen = k;
      chosen_s = s;
      break;
    }
  }
  char why[256];
  if (forced)
    std::snprintf(why, sizeof why, "forced: hand-outs of at most %lld row(s) (LOWSYNC_RUNTIME_HAND_OUT_ROWS)",
                  static_cast<long long>(hand_out_));
  else
    std::snprintf(why, sizeof why, "%lld of the batch's %lld rows: the %lld rows left end in %.3g s, not %.3g s whole",
                  static_cast<long long>(chosen), static_cast<long long>(whole), static_cast<long long>(left), chosen_s,
                  whole_s);
  hand_outs_.push_back({now_s, next, whole, chosen, left, chosen_s, whole_s, -1, why});
  return chosen;
}

void RuntimePlanner::handed_out(int64_t batch, const RowsWork& work, double now_s) {
  in_flight_[batch] = {work, now_s, run_seconds(dp_cost(), work, slots_)};
}

void RuntimePlanner::completed(int64_t batch) { in_flight_.erase(batch); }

void RuntimePlanner::finish(double end_s) {
  for (RuntimeDecision& d : decisions_) d.measured_s = end_s - d.at_s;
  for (HandOutDecision& d : hand_outs_) d.measured_s = end_s - d.at_s;
  if (evaluations_ > 0) last_.measured_s = end_s - last_.at_s;
}

}  // namespace lowsync
