#include "jobs/continuous_generate.h"

#include <algorithm>

#include "jobs/finite.h"
#include "jobs/logprobs.h"
#include "jobs/stopping.h"
#include "mpi_comm/trace.h"

namespace lowsync {

int64_t ContinuousGenerator::row_need(const ModelConfig& model, const GenerateOptions& opt, int64_t prompt_tokens) {
  return std::min<int64_t>(prompt_tokens + opt.max_new_tokens, model.max_positions);
}

ContinuousGenerator::ContinuousGenerator(Transformer& model, const JobConfig& job, const GenerateOptions& gen,
                                         const PromptReader& input, int64_t cache_rows, PhaseTimes& times)
    : model_(model), job_(job), gen_(gen), input_(input), times_(times), cache_(model.make_cache(cache_rows)), arena_(cache_rows) {}

void ContinuousGenerator::admit(int64_t index, const Batch& batch) {
  BatchState& b = batches_[index];
  b.first_row = batch.first_row;
  b.rows_left = batch.end_row - batch.first_row;
  b.results.resize(b.rows_left);
  b.start = std::chrono::steady_clock::now();
  for (int64_t r = batch.first_row; r < batch.end_row; ++r) {
    std::vector<int32_t> prompt = input_.tokens(r);
    const int64_t need = row_need(model_.config(), job_.generate, static_cast<int64_t>(prompt.size()));
    waiting_.push_back({r, index, std::move(prompt), Sampler(gen_, gen_.seed, r), -1, need, {}, {}});
  }
}

bool ContinuousGenerator::wants_rows() const {
  return waiting_.empty() && static_cast<int>(running_.size()) < job_.batch.max_sequences;
}

ContinuousGenerator::Finished ContinuousGenerator::step() {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  const ModelConfig& cfg = model_.config();
  // The pass: every running row's last token, then the prompts of waiting rows while sequence
  // slots, the prefill token budget (batch.max_tokens; one prompt always goes) and cache rows last.
  BatchLayout layout;
  std::vector<int32_t> tokens;
  const size_t decoding = running_.size();
  for (const Row& r : running_) {
    layout.add(1, static_cast<int64_t>(r.prompt.size() + r.result.tokens.size()) - 1, r.base);
    tokens.push_back(r.result.tokens.back());
  }
  int64_t prefill_tokens = 0;
  while (!waiting_.empty() && static_cast<int>(running_.size()) < job_.batch.max_sequences) {
    Row& next = waiting_.front();
    const int64_t n = static_cast<int64_t>(next.prompt.size());
    if (prefill_tokens > 0 && prefill_tokens + n > job_.batch.max_tokens) break;
    next.base = arena_.take(next.need);
    if (next.base < 0) break;  // the cache is fragmented or full: it waits for rows to finish
    layout.add(n, 0, next.base);
    tokens.insert(tokens.end(), next.prompt.begin(), next.prompt.end());
    prefill_tokens += n;
    running_.push_back(std::move(next));
    waiting_.pop_front();
  }

  trace::Span span("compute", decoding ? "decode step" : "prefill",
                   "\"decoding\": " + std::to_string(decoding) + ", \"starting\": " +
                       std::to_string(running_.size() - decoding) + ", \"prefill_tokens\": " +
                       std::to_string(prefill_tokens));
  const Tensor hidden = model_.forward(tokens, layout, cache_);
  std::vector<int64_t> last;
  for (const SequenceSlot& s : layout.seqs) last.push_back(s.token_begin + s.n_new - 1);
  // A split head with every row greedy: the rows' merged argmax and normaliser, no whole rows.
  bool argmax_only = model_.head_split() && gen_.logprobs == 0;
  for (const Row& r : running_) argmax_only = argmax_only && r.sampler.picks_argmax(r.result.tokens.size());
  std::vector<LogitSummary> summaries;
  if (argmax_only) {
    summaries = model_.logit_summaries(hidden, last);
  } else {
    const Tensor logits = model_.logits(hidden, last);
    logits_host_.resize(logits.numel());
    model_.backend().to_host(logits, logits_host_.data());
  }

  Finished done;
  std::vector<Row> still;
  const auto now = Clock::now();
  auto ms = [](Clock::duration d) { return std::chrono::duration<float, std::milli>(d).count(); };
  for (size_t j = 0; j < running_.size(); ++j) {
    Row& r = running_[j];
    const std::string what = "the logits for new token " + std::to_string(r.result.tokens.size());
    if (argmax_only) {
      require_finite(model_, summaries[j], r.input_row, "generate", what);
      r.result.tokens.push_back(argmax_with_logprob(summaries[j], r.result));
    } else {
      const float* l = logits_host_.data() + j * cfg.vocab;
      require_finite(model_, l, cfg.vocab, r.input_row, "generate", what);
      r.result.tokens.push_back(r.sampler.next(l, cfg.vocab, r.prompt, r.result.tokens));
      record_logprobs(l, cfg.vocab, r.result.tokens.back(), gen_.logprobs, r.result);
    }
    if (r.result.tokens.size() == 1) {  // its prompt's pass: time to first token, waiting included
      r.first_token = now;
      r.result.prefill_ms = ms(now - batches_[r.batch].start);
    }
    const std::optional<FinishReason> reason = finish_reason(cfg, gen_, r.prompt.size(), r.result.tokens);
    if (!reason) {
      still.push_back(std::move(r));
      continue;
    }
    r.result.finish_reason = *reason;
    r.result.decode_ms = ms(now - r.first_token);
    arena_.give_back(r.base, r.need);
    BatchState& b = batches_[r.batch];
    b.results[r.input_row - b.first_row] = std::move(r.result);
    if (--b.rows_left > 0) continue;
    const float ms = static_cast<float>(std::chrono::duration<double, std::milli>(Clock::now() - b.start).count());
    for (RowResult& res : b.results) res.latency_ms = ms;
    done.emplace_back(r.batch, std::move(b.results));
    batches_.erase(r.batch);
  }
  running_ = std::move(still);

  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  last_pass_ = {static_cast<int>(decoding), prefill_tokens, seconds};
  if (decoding) {
    times_.decode_s += seconds;
    ++times_.decode_steps;
  } else {
    times_.prefill_s += seconds;
    ++times_.prefill_passes;
  }
  return done;
}

}  // namespace lowsync
