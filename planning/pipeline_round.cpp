#include "planning/pipeline_round.h"

#include <algorithm>
#include <numeric>

namespace lowsync {

namespace {

double most(const std::vector<double>& t) { return t.empty() ? 0 : *std::max_element(t.begin(), t.end()); }
double sum(const std::vector<double>& t) { return std::accumulate(t.begin(), t.end(), 0.0); }

// What paces a full pipeline: its busiest stage or link, per micro-batch.
double busiest(const PipelinePass& p) { return std::max(most(p.stage_s), most(p.link_s)); }
// One micro-batch through every stage and hand-over.
double through(const PipelinePass& p) { return sum(p.stage_s) + sum(p.hand_over_s); }

}  // namespace

double pipeline_round_seconds(const PipelinePass& p, double micro_batches) {
  if (p.stage_s.size() == 1) return micro_batches * p.stage_s[0];  // one stage: nothing travels
  return std::max(micro_batches * busiest(p), through(p) + p.token_return_s);
}

double pipeline_fill_seconds(const PipelinePass& p, double micro_batches) {
  return through(p) + (micro_batches - 1) * busiest(p);
}

}  // namespace lowsync
