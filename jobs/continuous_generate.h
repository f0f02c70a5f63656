#pragma once
// Continuous batching for generate (one pipeline stage): up to batch.max_sequences rows decode
// together; when a row finishes, a waiting row takes its place and its prompt's prefill joins the
// next pass, so passes stay full until the prompts run out instead of waiting for a batch's
// longest row. Rows arrive from the work queue a batch at a time and a batch's results go back
// when its last row finishes; each row keeps its own sampling stream (seeded by its input row) and
// its own cache rows, so its tokens do not depend on its neighbours.
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
  // cache_rows: KV cache rows shared by all running sequences; at least one row's prompt and new
  // tokens (longest_row_need), and room for a full batch in the usual case.
  // gen: the job's generate options with their stop rules resolved (resolve_stops).
  ContinuousGenerator(Transformer& model, const JobConfig& job, const GenerateOptions& gen, const PromptReader& input,
                      int64_t cache_rows, PhaseTimes& times);

  // Queues the rows of a batch the work queue handed out.
  void admit(int64_t index, const Batch& batch);
  // Free sequence slots and no row waiting for one: time to take another batch.
  bool wants_rows() const;
  bool idle() const { return running_.empty() && waiting_.empty(); }

  using Finished = std::vector<std::pair<int64_t, std::vector<RowResult>>>;
  // One pass: running rows decode one token, waiting rows that fit start with their prompt.
  // Returns the batches whose last row finished in it, with their results.
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
    int64_t base = -1, need = 0;  // its cache rows [base, base + need)
    RowResult result;
    std::chrono::steady_clock::time_point first_token;  // when its prefill pass ended
  };
  struct BatchState {
    int64_t first_row = 0, rows_left = 0;
    std::vector<RowResult> results;
    std::chrono::steady_clock::time_point start;
  };

  Transformer& model_;
  const JobConfig& job_;
  const GenerateOptions& gen_;
  const PromptReader& input_;
  PhaseTimes& times_;
  KVCache cache_;
  CacheArena arena_;
  std::deque<Row> waiting_;
  std::vector<Row> running_;
  std::map<int64_t, BatchState> batches_;
  std::vector<float> logits_host_;
  PassRecord last_pass_;
};

}  // namespace lowsync
