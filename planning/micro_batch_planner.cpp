#include "planning/micro_batch_planner.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "planning/pipeline_round.h"

namespace lowsync {

double MicroBatchDecision::predicted(int count) const {
  for (const auto& [m, s] : predicted_round_s)
    if (m == count) return s;
  return -1;
}

MicroBatchPlanner::MicroBatchPlanner(int stages, int slots, int current, int64_t forced_batch, int forced_count)
    : stages_(stages), slots_(slots), current_(current), forced_batch_(forced_batch), forced_count_(forced_count) {}

void MicroBatchPlanner::measured_round(int micro_batches, int rows, double seconds, bool decode_only) {
  if (micro_batches != current_) return;
  if (!decisions_.empty() && decisions_.back().chosen == current_) {
    MicroBatchDecision& d = decisions_.back();
    if (decode_only) {
      d.measured_round_s = (d.measured_round_s * d.measured_rounds + seconds) / (d.measured_rounds + 1);
      ++d.measured_rounds;
    }
  }
  if (!decode_only) return;
  std::vector<Round>& kept = rounds_[micro_batches];
  kept.push_back({rows, seconds});
  if (kept.size() > kKeep) kept.erase(kept.begin());
}

double MicroBatchPlanner::measured_over_predicted(const std::vector<PassCost>& stages, int count) const {
  const auto it = rounds_.find(count);
  if (it == rounds_.end() || it->second.size() < 2) return 0;
  std::vector<double> ratios;
  for (const Round& r : it->second) {
    const double predicted = predict_round(stages, r.rows, count);
    if (predicted > 0) ratios.push_back(r.seconds / predicted);
  }
  if (ratios.empty()) return 0;
  std::nth_element(ratios.begin(), ratios.begin() + ratios.size() / 2, ratios.end());
  return ratios[ratios.size() / 2];
}

double MicroBatchPlanner::predict_round(const std::vector<PassCost>& stages, int rows, int count) const {
  PipelinePass p;
  for (const PassCost& c : stages) p.stage_s.push_back(c.seconds(double(rows) / count, 0));
  p.hand_over_s.assign(stages.size() - 1, 0.0);  // the trip's time outside the stages is all in trip_s_
  p.token_return_s = trip_s_;
  return pipeline_round_seconds(p, count);
}

void MicroBatchPlanner::estimate_trip(const std::vector<PassCost>& stages) {
  // Per round: how much longer than its stages' passes it took where that exceeds the busiest
  // stage's share (5% over it: a round on a shared machine varies by that much). The median, so a
  // round that was descheduled does not set it.
  std::vector<double> trips;
  for (const Round& r : rounds_[current_]) {
    const double b = double(r.rows) / current_;
    double through = 0, busiest = 0;
    for (const PassCost& c : stages) {
      through += c.seconds(b, 0);
      busiest = std::max(busiest, c.seconds(b, 0));
    }
    trips.push_back(r.seconds > 1.05 * current_ * busiest ? std::max(0.0, r.seconds - through) : 0.0);
  }
  if (trips.empty()) return;
  std::nth_element(trips.begin(), trips.begin() + trips.size() / 2, trips.end());
  const double median = trips[trips.size() / 2];
  if (median > 0) trip_s_ = median;
}

int MicroBatchPlanner::decide(int64_t batch, const std::vector<PassCost>& stages,
                              const std::vector<int64_t>& stage_passes, int rows, int64_t rows_left, double now_s) {
  const bool forced = forced_batch_ >= 0 && batch == forced_batch_;
  // Enough to predict from: two decode-only rounds at this count, a few passes on every stage.
  const int64_t fewest = stage_passes.empty() ? 0 : *std::min_element(stage_passes.begin(), stage_passes.end());
  rows = std::min(rows, slots_);
  if (!forced && (rounds_[current_].size() < 2 || fewest < 4 || rows < 1)) return current_;
  ++evaluations_;
  estimate_trip(stages);
  MicroBatchDecision d;
  d.at_s = now_s;
  d.batch = batch;
  d.rows_left = rows_left;
  d.rows = rows;
  d.from = current_;
  d.trip_s = trip_s_;
  d.stages = stages;
  const int most = std::max(1, std::min({std::max(rows, 1), 4 * stages_, slots_}));
  // The formula's round for each count, times that count's measured correction (the current
  // count's for a count not run yet, so that the formula alone ranks those).
  const double current_correction = measured_over_predicted(stages, current_);
  auto corrected = [&](int m) {
    const double own = measured_over_predicted(stages, m);
    if (own > 0) d.correction.push_back({m, own});
    return predict_round(stages, std::max(rows, 1), m) * (own > 0 ? own : current_correction > 0 ? current_correction : 1);
  };
  int best = -1;
  for (int m = 1; m <= most; ++m) {
    d.predicted_round_s.push_back({m, corrected(m)});
    if (best < 0 || d.predicted_round_s.back().second < d.predicted(best)) best = m;
  }
  const double now_round = d.predicted(current_) > 0 ? d.predicted(current_) : corrected(current_);
  char why[256];
  if (forced) {
    d.chosen = forced_count_;
    std::snprintf(why, sizeof why, "forced at batch %lld (LOWSYNC_MICRO_BATCHES_AT)", static_cast<long long>(batch));
  } else if (best != current_ && d.predicted(best) < (1 - kGain) * now_round) {
    d.chosen = best;
    std::snprintf(why, sizeof why, "%d micro-batches predicted %.0f%% shorter rounds than %d (needs %.0f%%)", best,
                  100 * (1 - d.predicted(best) / now_round), current_, 100 * kGain);
  } else {
    d.chosen = current_;
    std::snprintf(why, sizeof why, "keeps %d: the best, %d, predicted %.0f%% shorter rounds (a change needs %.0f%%)",
                  current_, best, 100 * (1 - d.predicted(best) / now_round), 100 * kGain);
  }
  d.why = why;
  current_ = d.chosen;
  decisions_.push_back(std::move(d));
  return current_;
}

std::string MicroBatchPlanner::json() const {
  nlohmann::json out;
  out["threshold"] = kGain;
  out["evaluations"] = evaluations_;
  out["trip_s"] = trip_s_;
  nlohmann::json list = nlohmann::json::array();
  for (const MicroBatchDecision& d : decisions_) {
    nlohmann::json predicted = nlohmann::json::object();
    for (const auto& [m, s] : d.predicted_round_s) predicted[std::to_string(m)] = s;
    nlohmann::json stages = nlohmann::json::array();
    for (const PassCost& c : d.stages)
      stages.push_back({{"fixed_s", c.fixed}, {"per_row_s", c.per_row}, {"per_token_s", c.per_token}});
    nlohmann::json correction = nlohmann::json::object();
    for (const auto& [m, f] : d.correction) correction[std::to_string(m)] = f;
    list.push_back({{"at_s", d.at_s}, {"batch", d.batch}, {"rows_left", d.rows_left}, {"rows", d.rows}, {"from", d.from},
                    {"chosen", d.chosen}, {"predicted_round_s", predicted}, {"measured_over_formula", correction},
                    {"trip_s", d.trip_s}, {"stage_pass", stages},
                    {"measured_round_s", d.measured_round_s < 0 ? nlohmann::json() : nlohmann::json(d.measured_round_s)},
                    {"measured_rounds", d.measured_rounds}, {"why", d.why}});
  }
  out["decisions"] = list;
  return out.dump();
}

std::string MicroBatchPlanner::text() const {
  std::string s;
  char line[512];
  for (const MicroBatchDecision& d : decisions_) {
    if (d.chosen == d.from) continue;
    std::snprintf(line, sizeof line,
                  "  micro-batches at %.2f s (batch %lld, %lld rows left): %d -> %d; round predicted %.2f ms against "
                  "%.2f ms, measured %s\n",
                  d.at_s, static_cast<long long>(d.batch), static_cast<long long>(d.rows_left), d.from, d.chosen,
                  1e3 * d.predicted(d.chosen), 1e3 * d.predicted(d.from),
                  d.measured_round_s < 0 ? "-" : (std::to_string(1e3 * d.measured_round_s).substr(0, 6) + " ms").c_str());
    s += line;
  }
  if (evaluations_ > 0) {
    std::snprintf(line, sizeof line, "  micro-batches: %lld evaluations, %d now\n", static_cast<long long>(evaluations_), current_);
    s += line;
  }
  return s;
}

}  // namespace lowsync
