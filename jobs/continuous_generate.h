#pragma once
// Continuous batching for generate: up to batch.max_sequences rows decode together; when a row
// finishes, a waiting row takes its place and its prompt's prefill joins the next pass, so passes
// stay full until the prompts run out instead of waiting for a batch's longest row. Rows arrive
// from the work queue a batch at a time and a batch's results go back when its last row finishes;
// each row keeps its own sampling stream (seeded by its input row) and its own cache rows, so its
// tokens do not depend on its neighbours.
//
// In a pipeline (several stages) the sequence slots are split into micro-batches (as
// parallel.micro_batches splits a static batch), each with its own KV cache rows, and every stage
// visits them in turn, one pass each (jobs/generate.cpp's schedule): the last stage samples a
// micro-batch's new tokens and sends them back to the earlier stages, which apply them before their
// next visit of it. A finished row's slot goes to a waiting prompt at that micro-batch's next visit.
// Every stage makes the same decisions at the same visit (which rows start where, when to take
// another batch from the work queue), because each decision about micro-batch m depends only on
// m's rows after its last tokens and on the waiting rows, which change only at visits, in the same
// order on every stage. With one stage there is one micro-batch and a visit is a pass of every
// running row.
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
    double seconds = 0;
  };
  const PassRecord& last_pass() const { return last_pass_; }

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
    KVCache cache;
    CacheArena arena;
    bool awaiting_tokens = false;  // earlier stages: the last stage owes the tokens of its last pass
  };
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

  PipelineStage& stage_;
  const JobConfig& job_;
  const GenerateOptions& gen_;
  const PromptReader& input_;
  PhaseTimes& times_;
  std::vector<MicroBatch> micro_;
  size_t next_ = 0;  // the micro-batch of the next visit
  std::deque<Row> waiting_;
  std::map<int64_t, BatchState> batches_;
  std::vector<float> logits_host_;
  PassRecord last_pass_;
  // The visits of the current round (one visit of each micro-batch): a round is one decode step
  // (or the prefill pass) in PhaseTimes, as a static batch's round is.
  double round_s_ = 0;
  int round_passes_ = 0;
  bool round_decoded_ = false;
};

}  // namespace lowsync
