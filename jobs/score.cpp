// Scoring: one packed pass over prompt + targets (all but the last target, which is only
// predicted) per micro-batch; the logits at position (prompt_len - 1 + j) give log p(target j).
// With score.window, a long row is several sequences of the pass, its windows (jobs/score_windows.h).
// In a pipeline the last stage computes them and hands the batch's results to the first.
#include <cmath>

#include "jobs/finite.h"
#include "jobs/score_windows.h"
#include "jobs/tasks.h"

namespace lowsync {

std::vector<RowResult> score_batch(PipelineStage& stage, const ScoreOptions& opt, const TokenRows& prompts,
                                   const TokenRows& targets, int64_t first_row) {
  Transformer& model = stage.model;
  std::vector<RowResult> out(prompts.size());
  const auto micro = split_rows(prompts.size(), stage.micro_batches);
  for (size_t m = 0; m < micro.size(); ++m) {
  BatchLayout layout;
  std::vector<int32_t> tokens;
  std::vector<int64_t> rows;  // packed row whose logits predict each target token
  std::vector<std::pair<size_t, int32_t>> owner;  // (batch row, target token) per entry of `rows`
  int64_t cache_rows = 0;
  for (size_t i : micro[m]) {
    // The row's tokens, prompt then targets; each window a sequence of its own (one without score.window).
    std::vector<int32_t> row = prompts[i];
    row.insert(row.end(), targets[i].begin(), targets[i].end());
    for (const ScoreWindow& w : score_windows(prompts[i].size(), targets[i].size(), opt)) {
      const int64_t begin = layout.tokens();
      layout.add(w.fed_end - w.begin, 0, cache_rows);
      cache_rows += w.fed_end - w.begin;
      tokens.insert(tokens.end(), row.begin() + w.begin, row.begin() + w.fed_end);
      for (int64_t t = w.first_scored; t <= w.fed_end && t < static_cast<int64_t>(row.size()); ++t) {
        rows.push_back(begin + (t - 1 - w.begin));
        owner.push_back({i, row[t]});
      }
    }
  }
  KVCache cache = model.make_cache(cache_rows);
  const Tensor hidden = stage.pass(static_cast<int>(m), tokens, layout, cache);
  if (!stage.link.last()) continue;

  // The LM head over a few hundred rows at a time keeps [rows, vocab] logits small. Each row needs
  // only its target's logit and the normaliser: its summary (merged across a split head's ranks).
  const size_t chunk = 256;
  for (size_t c0 = 0; c0 < rows.size(); c0 += chunk) {
    const size_t c1 = std::min(rows.size(), c0 + chunk);
    const std::vector<int64_t> part(rows.begin() + c0, rows.begin() + c1);
    std::vector<int32_t> part_targets;
    for (size_t j = c0; j < c1; ++j) part_targets.push_back(owner[j].second);
    const std::vector<LogitSummary> summaries = model.logit_summaries(hidden, part, part_targets);
    for (size_t j = 0; j < part.size(); ++j) {
      const size_t row = owner[c0 + j].first;
      require_finite(model, summaries[j], first_row + static_cast<int64_t>(row),
                     "score", "the logits for target " + std::to_string(out[row].token_logprobs.size()));
      const double lp = summaries[j].target_logprob();
      out[row].token_logprobs.push_back(static_cast<float>(lp));
      out[row].sum_logprob += lp;
    }
  }
  }
  if (stage.link.stages() == 1) return out;
  if (stage.link.last()) stage.link.send_results(out);
  return stage.link.first() ? stage.link.receive_results() : std::vector<RowResult>{};
}

}  // namespace lowsync
