// Generation: one packed prefill of all prompts, then decode steps in which only the rows still
// running take part. A row stops at EOS (if asked), at max_new_tokens, or at the model's last position.
#include <algorithm>
#include <chrono>

#include "jobs/finite.h"
#include "jobs/sampler.h"
#include "mpi_comm/trace.h"
#include "jobs/tasks.h"

namespace lowsync {

std::vector<RowResult> generate_batch(Transformer& model, const GenerateOptions& opt, const TokenRows& prompts,
                                      int64_t first_row, PhaseTimes& times) {
  const ModelConfig& cfg = model.config();
  Backend& be = model.backend();
  const size_t n = prompts.size();
  std::vector<RowResult> out(n);
  std::vector<Sampler> samplers;
  std::vector<int64_t> base(n);
  int64_t cache_rows = 0;
  for (size_t i = 0; i < n; ++i) {
    samplers.emplace_back(opt, opt.seed, first_row + static_cast<int64_t>(i));
    base[i] = cache_rows;
    cache_rows += std::min<int64_t>(static_cast<int64_t>(prompts[i].size()) + opt.max_new_tokens, cfg.max_positions);
  }
  KVCache cache = model.make_cache(cache_rows);

  auto is_eos = [&](int t) {
    return opt.stop_at_eos && std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), t) != cfg.eos_token_ids.end();
  };
  std::vector<float> logits_host;
  // Runs one pass over `rows` (their `tokens`), samples one new token for each, and returns the
  // rows that keep going.
  auto step = [&](const std::vector<size_t>& rows, const std::vector<int32_t>& tokens, const BatchLayout& layout) {
    Tensor hidden = model.forward(tokens, layout, cache);
    std::vector<int64_t> last;
    for (const SequenceSlot& s : layout.seqs) last.push_back(s.token_begin + s.n_new - 1);
    Tensor logits = model.logits(hidden, last);
    logits_host.resize(logits.numel());
    be.to_host(logits, logits_host.data());
    std::vector<size_t> running;
    for (size_t j = 0; j < rows.size(); ++j) {
      const size_t i = rows[j];
      require_finite(model, logits_host.data() + j * cfg.vocab, cfg.vocab, first_row + static_cast<int64_t>(i),
                     "generate", "the logits for new token " + std::to_string(out[i].tokens.size()));
      const int t = samplers[i].next(logits_host.data() + j * cfg.vocab, cfg.vocab);
      out[i].tokens.push_back(t);
      // The next pass would put this token at position prompt + generated - 1.
      const int64_t generated = static_cast<int64_t>(out[i].tokens.size());
      const bool full = generated >= opt.max_new_tokens ||
                        static_cast<int64_t>(prompts[i].size()) + generated > cfg.max_positions;
      if (!is_eos(t) && !full) running.push_back(i);
    }
    return running;
  };

  // Prefill: every prompt in one packed pass.
  BatchLayout layout;
  std::vector<int32_t> tokens;
  std::vector<size_t> rows(n);
  for (size_t i = 0; i < n; ++i) {
    rows[i] = i;
    layout.add(static_cast<int64_t>(prompts[i].size()), 0, base[i]);
    tokens.insert(tokens.end(), prompts[i].begin(), prompts[i].end());
  }
  using Clock = std::chrono::steady_clock;
  auto t0 = Clock::now();
  std::vector<size_t> running;
  {
    trace::Span span("compute", "prefill", "\"rows\": " + std::to_string(n) + ", \"tokens\": " + std::to_string(tokens.size()));
    running = step(rows, tokens, layout);
  }
  times.prefill_s += std::chrono::duration<double>(Clock::now() - t0).count();
  ++times.prefill_passes;

  // Decode: the last token of every running row, one position further each step.
  while (!running.empty()) {
    BatchLayout dl;
    std::vector<int32_t> next;
    for (size_t i : running) {
      const int64_t past = static_cast<int64_t>(prompts[i].size() + out[i].tokens.size()) - 1;
      dl.add(1, past, base[i]);
      next.push_back(out[i].tokens.back());
    }
    t0 = Clock::now();
    trace::Span span("compute", "decode step", "\"rows\": " + std::to_string(running.size()));
    running = step(running, next, dl);
    times.decode_s += std::chrono::duration<double>(Clock::now() - t0).count();
    ++times.decode_steps;
  }
  return out;
}

}  // namespace lowsync
