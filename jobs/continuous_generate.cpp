#include "jobs/continuous_generate.h"

#include <algorithm>

#include "jobs/finite.h"
#include "jobs/logprobs.h"
#include "jobs/stopping.h"
#include "mpi_comm/trace.h"

namespace lowsync {

using Clock = std::chrono::steady_clock;

int64_t ContinuousGenerator::row_need(const ModelConfig& model, const GenerateOptions& opt, int64_t prompt_tokens) {
  return std::min<int64_t>(prompt_tokens + opt.max_new_tokens, model.max_positions);
}

ContinuousGenerator::ContinuousGenerator(PipelineStage& stage, const JobConfig& job, const GenerateOptions& gen,
                                         const PromptReader& input, int64_t longest_row_need, PhaseTimes& times)
    : stage_(stage), job_(job), gen_(gen), input_(input), times_(times) {
  // One stage: one micro-batch of every slot. A pipeline: the slots split as a static batch's rows
  // are. One cache for all: the prefill tokens plus every slot's new tokens (what the plan's memory
  // check counts), at least the longest row's need.
  micro_ = split_slots(stage.link.stages() > 1 ? stage.micro_batches : 1);
  const int64_t rows = std::max<int64_t>(job.batch.max_tokens + int64_t(job.batch.max_sequences) * job.generate.max_new_tokens,
                                         longest_row_need);
  cache_ = stage.model.make_cache(rows);
  arena_ = CacheArena(rows);
}

std::vector<ContinuousGenerator::MicroBatch> ContinuousGenerator::split_slots(int count) const {
  const int sequences = job_.batch.max_sequences;
  const int parts = std::max(1, std::min(count, sequences));
  std::vector<MicroBatch> out(parts);
  for (int m = 0; m < parts; ++m) out[m].slots = sequences / parts + (m < sequences % parts ? 1 : 0);
  return out;
}

int ContinuousGenerator::rows_held() const {
  size_t n = waiting_.size();
  for (const MicroBatch& mb : micro_) n += mb.running.size();
  return static_cast<int>(n);
}

ContinuousGenerator::Finished ContinuousGenerator::set_micro_batches(int count) {
  Finished done;
  StageLink& link = stage_.link;
  // The tokens still owed, oldest visit first: the micro-batches after the next one's, in turn.
  for (size_t i = 1; i < micro_.size(); ++i) {
    const size_t m = (next_ + i) % micro_.size();
    if (!micro_[m].awaiting_tokens) continue;
    apply(micro_[m], link.receive_tokens(static_cast<int>(m), micro_[m].running.size()), done);
    micro_[m].awaiting_tokens = false;
  }
  for (MicroBatch& mb : micro_) give_back_ended(mb);
  end_round();
  std::vector<MicroBatch> fresh = split_slots(count);
  size_t into = 0;
  for (MicroBatch& mb : micro_)
    for (Row& r : mb.running) {
      while (static_cast<int>(fresh[into].running.size()) >= fresh[into].slots) ++into;
      fresh[into].running.push_back(std::move(r));
    }
  micro_ = std::move(fresh);
  next_ = 0;
  return done;
}

void ContinuousGenerator::admit(int64_t index, const Batch& batch) {
  BatchState& b = batches_[index];
  b.first_row = batch.first_row;
  b.rows_left = batch.end_row - batch.first_row;
  b.results.resize(b.rows_left);
  b.start = Clock::now();
  for (int64_t r = batch.first_row; r < batch.end_row; ++r) {
    std::vector<int32_t> prompt = input_.tokens(r);
    const int64_t need = row_need(stage_.model.config(), job_.generate, static_cast<int64_t>(prompt.size()));
    waiting_.push_back({r, index, std::move(prompt), Sampler(gen_, gen_.seed, r), -1, need, {}, {}});
  }
}

bool ContinuousGenerator::wants_rows() const {
  return waiting_.empty() && static_cast<int>(micro_[next_].running.size()) < micro_[next_].slots;
}

bool ContinuousGenerator::idle() const {
  if (!waiting_.empty()) return false;
  for (const MicroBatch& mb : micro_)
    if (!mb.running.empty()) return false;
  return true;
}

ContinuousGenerator::Finished ContinuousGenerator::step() {
  const auto t0 = Clock::now();
  const int m = static_cast<int>(next_);
  MicroBatch& mb = micro_[next_];
  next_ = (next_ + 1) % micro_.size();
  StageLink& link = stage_.link;
  Finished done;

  give_back_ended(mb);
  // The pass: every running row's last token, then the prompts of waiting rows while sequence
  // slots, the prefill token budget (batch.max_tokens; one prompt always goes) and cache rows last.
  BatchLayout layout;
  std::vector<int32_t> tokens;
  const size_t decoding = mb.running.size();
  for (const Row& r : mb.running) {
    layout.add(1, static_cast<int64_t>(r.prompt.size() + r.result.tokens.size()) - 1, r.base);
    tokens.push_back(r.result.tokens.back());
  }
  int64_t prefill_tokens = 0;
  while (!waiting_.empty() && static_cast<int>(mb.running.size()) < mb.slots) {
    Row& next = waiting_.front();
    const int64_t n = static_cast<int64_t>(next.prompt.size());
    if (prefill_tokens > 0 && prefill_tokens + n > job_.batch.max_tokens) break;
    next.base = arena_.take(next.need);
    if (next.base < 0) break;  // the cache is fragmented or full: it waits for rows to finish
    layout.add(n, 0, next.base);
    tokens.insert(tokens.end(), next.prompt.begin(), next.prompt.end());
    prefill_tokens += n;
    mb.running.push_back(std::move(next));
    waiting_.pop_front();
  }

  const bool ran = !mb.running.empty();
  double sample_s = 0;  // the last stage's head and sampling, part of its pass
  if (ran) {
    trace::Span span("compute", decoding ? "decode step" : "prefill",
                     "\"decoding\": " + std::to_string(decoding) + ", \"starting\": " +
                         std::to_string(mb.running.size() - decoding) + ", \"prefill_tokens\": " +
                         std::to_string(prefill_tokens) + ", \"micro_batch\": " + std::to_string(m));
    const Tensor hidden = stage_.pass(m, tokens, layout, cache_);
    if (link.last()) {
      const auto ts = Clock::now();
      const std::vector<int32_t> sampled = sample(mb, hidden, layout);
      sample_s = std::chrono::duration<double>(Clock::now() - ts).count();
      if (link.stages() > 1) link.send_tokens(m, sampled);
      apply(mb, sampled, done);
    } else {
      mb.awaiting_tokens = true;
    }
    ++round_passes_;
    round_rows_ += static_cast<int>(decoding);
    round_decoded_ = round_decoded_ || decoding > 0;
    round_prefilled_ = round_prefilled_ || prefill_tokens > 0;
  }
  // Earlier stages: the next micro-batch's tokens from its last pass, before anything is decided
  // about it (the last stage applied them when it sampled them).
  if (MicroBatch& coming = micro_[next_]; coming.awaiting_tokens) {
    apply(coming, link.receive_tokens(static_cast<int>(next_), coming.running.size()), done);
    coming.awaiting_tokens = false;
  }

  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  last_pass_ = {static_cast<int>(decoding), prefill_tokens, seconds, ran ? stage_.last_compute_s + sample_s : 0, ran};
  round_s_ += seconds;
  round_ended_ = false;
  if (next_ == 0) end_round();
  return done;
}

void ContinuousGenerator::give_back_ended(MicroBatch& mb) {
  for (const auto& [base, rows] : mb.ended) arena_.give_back(base, rows);
  mb.ended.clear();
}

void ContinuousGenerator::end_round() {
  if (round_passes_ > 0 && round_decoded_) {
    times_.decode_s += round_s_;
    ++times_.decode_steps;
  } else if (round_passes_ > 0) {
    times_.prefill_s += round_s_;
    ++times_.prefill_passes;
  }
  last_round_ = {round_s_, round_rows_, static_cast<int>(micro_.size()),
                 round_decoded_ && !round_prefilled_ && round_passes_ == static_cast<int>(micro_.size())};
  round_ended_ = round_passes_ > 0;
  round_s_ = 0;
  round_passes_ = 0;
  round_rows_ = 0;
  round_decoded_ = false;
  round_prefilled_ = false;
}

std::vector<int32_t> ContinuousGenerator::sample(MicroBatch& mb, const Tensor& hidden, const BatchLayout& layout) {
  Transformer& model = stage_.model;
  const ModelConfig& cfg = model.config();
  std::vector<int64_t> last;
  for (const SequenceSlot& s : layout.seqs) last.push_back(s.token_begin + s.n_new - 1);
  // A split head with every row greedy: the rows' merged argmax and normaliser, no whole rows.
  bool argmax_only = model.head_split() && gen_.logprobs == 0;
  for (const Row& r : mb.running) argmax_only = argmax_only && r.sampler.picks_argmax(r.result.tokens.size());
  std::vector<LogitSummary> summaries;
  if (argmax_only) {
    summaries = model.logit_summaries(hidden, last);
  } else {
    const Tensor logits = model.logits(hidden, last);
    logits_host_.resize(logits.numel());
    model.backend().to_host(logits, logits_host_.data());
  }
  std::vector<int32_t> sampled;
  for (size_t j = 0; j < mb.running.size(); ++j) {
    Row& r = mb.running[j];
    const std::string what = "the logits for new token " + std::to_string(r.result.tokens.size());
    if (argmax_only) {
      require_finite(model, summaries[j], r.input_row, "generate", what);
      sampled.push_back(argmax_with_logprob(summaries[j], r.result));
    } else {
      const float* l = logits_host_.data() + j * cfg.vocab;
      require_finite(model, l, cfg.vocab, r.input_row, "generate", what);
      sampled.push_back(r.sampler.next(l, cfg.vocab, r.prompt, r.result.tokens));
      record_logprobs(l, cfg.vocab, sampled.back(), gen_.logprobs, r.result);
    }
  }
  return sampled;
}

void ContinuousGenerator::apply(MicroBatch& mb, const std::vector<int32_t>& tokens, Finished& done) {
  StageLink& link = stage_.link;
  const auto now = Clock::now();
  auto ms = [](Clock::duration d) { return std::chrono::duration<float, std::milli>(d).count(); };
  std::vector<Row> still;
  for (size_t j = 0; j < mb.running.size(); ++j) {
    Row& r = mb.running[j];
    r.result.tokens.push_back(tokens[j]);
    if (r.result.tokens.size() == 1) {  // its prompt's pass: time to first token, waiting included
      r.first_token = now;
      r.result.prefill_ms = ms(now - batches_[r.batch].start);
    }
    const std::optional<FinishReason> reason = finish_reason(stage_.model.config(), gen_, r.prompt.size(), r.result.tokens);
    if (!reason) {
      still.push_back(std::move(r));
      continue;
    }
    r.result.finish_reason = *reason;
    r.result.decode_ms = ms(now - r.first_token);
    mb.ended.push_back({r.base, r.need});
    BatchState& b = batches_[r.batch];
    b.results[r.input_row - b.first_row] = std::move(r.result);
    if (--b.rows_left > 0) continue;
    const float batch_ms = ms(Clock::now() - b.start);
    for (RowResult& res : b.results) res.latency_ms = batch_ms;
    // A pipeline: the log-probs are the last stage's, so its results go to the first stage (the
    // replica's leader is there), which learns at this same point that the batch ended.
    if (link.stages() > 1 && link.last()) link.send_results(b.results);
    if (link.stages() > 1 && link.first()) b.results = link.receive_results();
    done.emplace_back(r.batch, std::move(b.results));
    batches_.erase(r.batch);
  }
  mb.running = std::move(still);
}

}  // namespace lowsync
