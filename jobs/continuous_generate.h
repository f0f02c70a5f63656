#pragma once
// Continuous batching for generate: up to batch.max_sequences rows decode together; when a row
// finishes, a waiting row takes its place and its prompt's prefill joins the next pass, so passes
// stay full until the prompts run out instead of waiting for a batch's longest row. Rows arrive
// from the work queue a batch at a time and a batch's results go back when its last row finishes;
// each row keeps its own sampling stream (seeded by its input row) and its own cache rows, so its
// tokens do not depend on its neighbours.
//
// In a pipeline (several stages) the sequence slots are split into micro-batches (as
// parallel.micro_batches splits a static batch), their rows in one KV cache, and every stage
// visits them in turn, one pass each (jobs/generate.cpp's schedule): the last stage samples a
// micro-batch's new tokens and sends them back to the earlier stages, which apply them before their
// next visit of it. A finished row's slot goes to a waiting prompt at that micro-batch's next visit.
// Every stage makes the same decisions at the same visit (which rows start where, when to take
// another batch from the work queue), because each decision about micro-batch m depends only on
// m's rows after its last tokens and on the waiting rows, which change only at visits, in the same
// order on every stage. With one stage there is one micro-batch and a visit is a pass of every
// running row. The count can change between visits (set_micro_batches: the runtime's re-choice),
// the same on every stage: rows keep their cache rows and move to other micro-batches.
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "io/job_config.h"
#include "io/prompts.h"
#include "jobs/cache_arena.h"
#include "jobs/sampler.h"
#include "jobs/tasks.h"
#include "jobs/work_queue.h"

namespace lowsync {

class ContinuousGenerator {
 public:
  // longest_row_need: the cache rows of the job's longest row (row_need); every micro-batch's cache
  // holds at least that, and room for its share of a full batch in the usual case.
  // gen: the job's generate options with their stop rules resolved (resolve_stops).
  ContinuousGenerator(PipelineStage& stage, const JobConfig& job, const GenerateOptions& gen, const PromptReader& input,
                      int64_t longest_row_need, PhaseTimes& times);

  // Queues the rows of a batch the work queue handed out.
  void admit(int64_t index, const Batch& batch);
  // The next visit's micro-batch has a free sequence slot and no row waits for one: time to take
  // another batch. The same answer on every stage of the replica (they call take() together).
  bool wants_rows() const;
  bool idle() const;

  using Finished = std::vector<std::pair<int64_t, std::vector<RowResult>>>;
  // One visit: the next micro-batch's running rows decode one token, waiting rows that fit its
  // free slots start with their prompt. Returns the batches whose last row finished (on the
  // first stage with the last stage's results: it alone has the log-probs).
  Finished step();

  // The last pass's shape and time (the runtime planner fits its pass costs to these).
  struct PassRecord {
    int decoding = 0;            // rows that decoded one token
    int64_t prefill_tokens = 0;  // prompt tokens of the rows that started
    double seconds = 0;          // the visit: its pass, and on earlier stages the wait for tokens
    double compute_s = 0;        // this stage's part of the pass alone (PipelineStage::last_compute_s)
    bool passed = false;         // false: the micro-batch had no rows, nothing ran
  };
  const PassRecord& last_pass() const { return last_pass_; }
  // The round the last visit ended (one visit of each micro-batch), when it ended one: its time,
  // the rows it decoded (every pass decode-only: no prompt started in it), micro-batches.
  struct RoundRecord {
    double seconds = 0;
    int rows = 0, micro_batches = 0;
    bool decode_only = false;
  };
  const RoundRecord* round_just_ended() const { return round_ended_ ? &last_round_ : nullptr; }

  int micro_batches() const { return static_cast<int>(micro_.size()); }
  // Every stage of the replica together, between visits: splits the slots into `count`
  // micro-batches (at most one per slot). The tokens earlier stages are owed are received first
  // (in the order the last stage sampled them: every pass of the visits so far is done on every
  // stage once all have come to this point), so nothing is in flight; the running rows then fill
  // the new micro-batches in order, keeping their cache rows. Returns the batches that ended.
  Finished set_micro_batches(int count);
  int rows_held() const;  // running and waiting

  // Cache rows one row needs at most: its prompt and new tokens, within the model's positions.
  static int64_t row_need(const ModelConfig& model, const GenerateOptions& opt, int64_t prompt_tokens);

 private:
  struct Row {
    int64_t input_row = 0, batch = 0;
    std::vector<int32_t> prompt;
    Sampler sampler;
    int64_t base = -1, need = 0;  // its cache rows [base, base + need) in its micro-batch's cache
    RowResult result;
    std::chrono::steady_clock::time_point first_token;  // when its prefill pass ended
  };
  struct MicroBatch {
    int slots = 0;  // its share of batch.max_sequences
    std::vector<Row> running;
    bool awaiting_tokens = false;  // earlier stages: the last stage owes the tokens of its last pass
    // Cache rows of its rows that ended, given back at its next visit: the last stage learns of
    // the end at once, earlier stages only when the tokens arrive, and the cache is shared, so
    // every stage gives them back at the same point (before the visit's new rows take theirs).
    std::vector<std::pair<int64_t, int64_t>> ended;  // [base, rows]
  };
  void give_back_ended(MicroBatch& mb);
  struct BatchState {
    int64_t first_row = 0, rows_left = 0;
    std::vector<RowResult> results;
    std::chrono::steady_clock::time_point start;
  };
  // Last stage: each running row's next token from the hidden state of mb's pass (its log-probs
  // recorded in the row's result).
  std::vector<int32_t> sample(MicroBatch& mb, const Tensor& hidden, const BatchLayout& layout);
  // Appends each running row's new token; rows that end give back their cache rows, and batches
  // whose last row ended go to `done`.
  void apply(MicroBatch& mb, const std::vector<int32_t>& tokens, Finished& done);
  // Empty micro-batches splitting the slots `count` ways, as a static batch's rows are.
  std::vector<MicroBatch> split_slots(int count) const;
  // The time of the visits since the last round ended goes to PhaseTimes as a decode step (or a
  // prefill pass when none decoded).
  void end_round();

  PipelineStage& stage_;
  const JobConfig& job_;
  const GenerateOptions& gen_;
  const PromptReader& input_;
  PhaseTimes& times_;
  std::vector<MicroBatch> micro_;
  size_t next_ = 0;  // the micro-batch of the next visit
  // Every micro-batch's rows in one cache (its first-fit arena), so that rows can change
  // micro-batch: what the plan's memory check counts (max_tokens prompt rows and each slot's new
  // tokens), at least the longest row's need.
  KVCache cache_;
  CacheArena arena_;
  std::deque<Row> waiting_;
  std::map<int64_t, BatchState> batches_;
  std::vector<float> logits_host_;
  PassRecord last_pass_;
  // The visits of the current round (one visit of each micro-batch): a round is one decode step
  // (or the prefill pass) in PhaseTimes, as a static batch's round is.
  double round_s_ = 0;
  int round_passes_ = 0, round_rows_ = 0;
  bool round_decoded_ = false, round_prefilled_ = false;
  RoundRecord last_round_;
  bool round_ended_ = false;
};

}  // namespace lowsync
