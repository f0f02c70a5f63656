#pragma once
// The three job kinds, each over one batch of rows. A batch is packed: its sequences are
// concatenated, no padding is computed.
#include <cstdint>
#include <vector>

#include "io/job_config.h"
#include "jobs/pipeline_stage.h"
#include "jobs/result_writer.h"
#include "layers/model.h"

namespace lowsync {

using TokenRows = std::vector<std::vector<int32_t>>;

// Where generation time goes (prefill passes against decode steps), summed over batches: the run
// report's measured figures that the cost model predicts.
struct PhaseTimes {
  double prefill_s = 0, decode_s = 0;
  int64_t prefill_passes = 0, decode_steps = 0;
};

// New tokens per prompt (a stop token or stop sequence included when it ends the row), with their
// log-probs and finish reason (jobs/stopping.h). Row i of the batch is input row first_row + i,
// which seeds its sampler. opt: with its stop rules resolved (resolve_stops).
// Each task runs on every rank of a replica, through the rank's pipeline stage; the results are
// complete on the replica's first stage (the replica's leader is there).
std::vector<RowResult> generate_batch(PipelineStage& stage, const GenerateOptions& opt, const TokenRows& prompts,
                                      int64_t first_row, PhaseTimes& times);
// log p(target j | prompt, targets before j) for every target token (with score.window: given the
// tokens of its window before it).
std::vector<RowResult> score_batch(PipelineStage& stage, const ScoreOptions& opt, const TokenRows& prompts,
                                   const TokenRows& targets, int64_t first_row);
// Pooled last hidden state per prompt.
std::vector<RowResult> embed_batch(PipelineStage& stage, const EmbedOptions& opt, const TokenRows& prompts,
                                   int64_t first_row);
// Every task stops with a UserError naming the input row (first_row + batch index) when the row's
// logits or embedding are not finite (jobs/finite.h).

}  // namespace lowsync
