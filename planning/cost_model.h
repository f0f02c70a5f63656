#pragma once
// Predicts how fast a plan runs from a profile and the model's shapes: per rank, the FLOPs of its
// share's products at the measured matmul rates, the bytes attention and element-wise work read at
// the measured bandwidth, the LM head (whole on every rank, or its rows of a split head); per pass,
// the slowest rank of a replica sets the pace, each sync costs the fitted all-reduce time of its
// activation bytes (a compressed sync: that of the fp32 message sending as many bytes on the
// wire), and a split head's merge (one all-gather per pass) that of the bytes gathered.
#include "io/model_config.h"
#include "planning/plan.h"
#include "planning/profile.h"

namespace lowsync {

// The shapes a job's passes have: what the cost model is asked about.
struct Workload {
  int prompt_tokens = 128;   // mean prompt (+ targets for score) length
  int batch_sequences = 32;  // sequences per prefill pass and per decode step (job: batch.max_sequences)
  int new_tokens = 32;       // generate: new tokens per row (0 for score and embed)
  int scored_tokens = 0;     // score: target tokens per row, the only rows through the LM head (0: every token)
  bool gather_rows = false;  // generate reads whole logits rows (a split head gathers them; split_head_gathers_rows)
};

struct Prediction {
  double prefill_pass_s = 0;      // one packed prefill pass of batch_sequences prompts
  double decode_step_s = 0;       // one decode step of batch_sequences rows, at mid-generation context
  double decode_step_one_s = 0;   // one decode step of a single sequence (latency)
  double compute_s = 0, comm_s = 0;  // of one decode step (prefill for score/embed), slowest rank
  double bytes_per_token = 0;     // all-reduce (and split-head all-gather) payload a rank hands to MPI per token
  double rows_per_s = 0;          // whole job, every replica busy: throughput objective
  double sequence_latency_s = 0;  // one prompt alone, start to last token: latency objective
};

// Ranks' speeds and links come from `profile` (its world must be the plan's); UserError when the
// profile lacks a link the plan needs.
Prediction predict(const Plan& plan, const ModelConfig& model, const Profile& profile, const Workload& work);

}  // namespace lowsync
