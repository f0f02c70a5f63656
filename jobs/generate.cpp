// Generation: each micro-batch of rows gets one packed prefill pass, then decode passes in which
// only its rows still running take part. A row stops as jobs/stopping.h says: at a stop token or
// stop sequence, at max_new_tokens, or at the model's last position.
//
// Pipelined (several stages): every stage visits the micro-batches in turn. The first stage embeds
// micro-batch m's next tokens and goes on to m + 1 while m travels through the later stages; the
// last stage samples m's new tokens and sends them back to every earlier stage, which apply them
// when they next reach m (the first stage needs them to embed; all of them keep the same record of
// which rows still run). With at least as many micro-batches as stages, no stage waits once the
// pipeline is full. With one stage and one micro-batch this is the plain prefill-then-decode loop.
#include <algorithm>
#include <chrono>

#include "jobs/finite.h"
#include "jobs/logprobs.h"
#include "jobs/sampler.h"
#include "jobs/stopping.h"
#include "jobs/tasks.h"
#include "mpi_comm/trace.h"

namespace lowsync {

namespace {

// One micro-batch: its rows of the batch, those still running, its KV cache (this stage's layers)
// and whether earlier stages still owe it the tokens sampled in its last pass.
struct MicroBatch {
  std::vector<size_t> rows, running;
  KVCache cache;
  bool started = false;
  bool awaiting_tokens = false;
};

}  // namespace

std::vector<RowResult> generate_batch(PipelineStage& stage, const GenerateOptions& opt, const TokenRows& prompts,
                                      int64_t first_row, PhaseTimes& times) {
  Transformer& model = stage.model;
  StageLink& link = stage.link;
  const ModelConfig& cfg = model.config();
  Backend& be = model.backend();
  const size_t n = prompts.size();
  std::vector<RowResult> out(n);
  std::vector<Sampler> samplers;
  for (size_t i = 0; i < n; ++i) samplers.emplace_back(opt, opt.seed, first_row + static_cast<int64_t>(i));

  std::vector<MicroBatch> micro;
  std::vector<int64_t> base(n);  // each row's first cache row in its micro-batch's cache
  for (const std::vector<size_t>& rows : split_rows(n, stage.micro_batches)) {
    MicroBatch mb;
    mb.rows = mb.running = rows;
    int64_t cache_rows = 0;
    for (size_t i : rows) {
      base[i] = cache_rows;
      cache_rows += std::min<int64_t>(static_cast<int64_t>(prompts[i].size()) + opt.max_new_tokens, cfg.max_positions);
    }
    mb.cache = model.make_cache(cache_rows);
    micro.push_back(std::move(mb));
  }

  // Appends each running row's new token and keeps the rows that go on; a row's first and last
  // tokens end its prefill_ms and decode_ms.
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto ms_since_start = [&] { return std::chrono::duration<float, std::milli>(Clock::now() - start).count(); };
  auto apply = [&](MicroBatch& mb, const std::vector<int32_t>& sampled) {
    const float now_ms = ms_since_start();
    std::vector<size_t> still;
    for (size_t j = 0; j < mb.running.size(); ++j) {
      const size_t i = mb.running[j];
      out[i].tokens.push_back(sampled[j]);
      if (out[i].tokens.size() == 1) out[i].prefill_ms = now_ms;
      const std::optional<FinishReason> reason = finish_reason(cfg, opt, prompts[i].size(), out[i].tokens);
      if (reason) {
        out[i].finish_reason = *reason;
        out[i].decode_ms = now_ms - out[i].prefill_ms;
      } else {
        still.push_back(i);
      }
    }
    mb.running = std::move(still);
  };
  std::vector<float> logits_host;
  // Last stage: one new token for each running row of mb from the hidden state of its pass.
  auto sample = [&](MicroBatch& mb, const Tensor& hidden, const BatchLayout& layout) {
    std::vector<int64_t> last;
    for (const SequenceSlot& s : layout.seqs) last.push_back(s.token_begin + s.n_new - 1);
    std::vector<int32_t> sampled;
    // A split head with every row greedy: the rows' merged argmax and normaliser, no whole rows.
    bool argmax_only = model.head_split() && opt.logprobs == 0;
    for (size_t i : mb.running) argmax_only = argmax_only && samplers[i].picks_argmax(out[i].tokens.size());
    if (argmax_only) {
      const std::vector<LogitSummary> rows = model.logit_summaries(hidden, last);
      for (size_t j = 0; j < mb.running.size(); ++j) {
        const size_t i = mb.running[j];
        require_finite(model, rows[j], first_row + static_cast<int64_t>(i), "generate",
                       "the logits for new token " + std::to_string(out[i].tokens.size()));
        sampled.push_back(argmax_with_logprob(rows[j], out[i]));
      }
      return sampled;
    }
    Tensor logits = model.logits(hidden, last);
    logits_host.resize(logits.numel());
    be.to_host(logits, logits_host.data());
    for (size_t j = 0; j < mb.running.size(); ++j) {
      const size_t i = mb.running[j];
      const float* l = logits_host.data() + j * cfg.vocab;
      require_finite(model, l, cfg.vocab, first_row + static_cast<int64_t>(i), "generate",
                     "the logits for new token " + std::to_string(out[i].tokens.size()));
      sampled.push_back(samplers[i].next(l, cfg.vocab, prompts[i], out[i].tokens));
      record_logprobs(l, cfg.vocab, sampled.back(), opt.logprobs, out[i]);
    }
    return sampled;
  };

  // Rounds: every micro-batch that still runs takes one pass (the first round prefills).
  for (bool prefill = true;; prefill = false) {
    bool any = false;
    const auto t0 = Clock::now();
    for (size_t m = 0; m < micro.size(); ++m) {
      MicroBatch& mb = micro[m];
      if (mb.awaiting_tokens) {
        apply(mb, link.receive_tokens(static_cast<int>(m), mb.running.size()));
        mb.awaiting_tokens = false;
      }
      if (mb.running.empty()) continue;
      any = true;
      BatchLayout layout;
      std::vector<int32_t> tokens;
      for (size_t i : mb.running) {
        if (!mb.started) {  // prefill: the whole prompt
          layout.add(static_cast<int64_t>(prompts[i].size()), 0, base[i]);
          tokens.insert(tokens.end(), prompts[i].begin(), prompts[i].end());
        } else {  // decode: the last token, one position further
          layout.add(1, static_cast<int64_t>(prompts[i].size() + out[i].tokens.size()) - 1, base[i]);
          tokens.push_back(out[i].tokens.back());
        }
      }
      mb.started = true;
      trace::Span span("compute", prefill ? "prefill" : "decode step",
                       "\"rows\": " + std::to_string(mb.running.size()) + ", \"tokens\": " +
                           std::to_string(layout.tokens()) + ", \"micro_batch\": " + std::to_string(m));
      const Tensor hidden = stage.pass(static_cast<int>(m), tokens, layout, mb.cache);
      if (!link.last()) {
        mb.awaiting_tokens = true;
        continue;
      }
      const std::vector<int32_t> sampled = sample(mb, hidden, layout);
      if (link.stages() > 1) link.send_tokens(static_cast<int>(m), sampled);
      apply(mb, sampled);
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!any) break;
    if (prefill) {
      times.prefill_s += seconds;
      ++times.prefill_passes;
    } else {
      times.decode_s += seconds;
      ++times.decode_steps;
    }
  }
  if (link.stages() == 1) return out;
  // The log-probs are the last stage's: its results (the same tokens) go to the first stage.
  if (link.last()) link.send_results(out);
  return link.first() ? link.receive_results() : out;
}

}  // namespace lowsync
