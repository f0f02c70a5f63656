#pragma once
// How long a pipeline takes for a batch split into micro-batches, from what one micro-batch costs
// on each stage and each link between stages. Derived from how the stages schedule
// (jobs/generate.cpp and jobs/continuous_generate.cpp): every stage visits the micro-batches in
// turn, one pass each; it hands a micro-batch's activations to the next stage with a non-blocking
// send and goes on with the next micro-batch at once; the last stage samples and sends the new
// tokens back, and an earlier stage waits for them only when it reaches that micro-batch again.
//
// So a stage is busy for its compute and syncs only (t_s), and a link between stages for the
// bytes it carries (bytes / bandwidth: the next message waits for them; the latencies of
// consecutive messages overlap). A micro-batch's trip takes every stage's pass, every hand-over in
// full (latency + bytes / bandwidth: h_s) and the tokens' way back (r).
//
// A decode round (every micro-batch one new token): the busiest stage or link is busy M times per
// round; and micro-batch m cannot start its next pass on the first stage before its last one has
// made the trip. The round takes whichever is longer:
//
//   round(M) = max(M x max(max_s t_s, max_s link_s), sum_s t_s + sum_s h_s + r)
//
// With a pass of b rows costing fixed + per_row x b, more micro-batches shorten the trip (each
// carries fewer rows) but pay a stage's fixed cost (reading its weights) M times per round: on
// one host, where a hand-over costs little, M = stages is about the best; a slow link's latency,
// which only the trip pays, wants more.
//
// A prefill (every micro-batch's prompts once, nothing fed back) fills the pipeline and drains it:
// the first micro-batch through every stage and link, then one more per busiest stage or link:
//
//   fill(M) = sum_s t_s + sum_s h_s + (M - 1) x max(max_s t_s, max_s link_s)
#include <vector>

namespace lowsync {

// One micro-batch's costs in a pipeline, in seconds.
struct PipelinePass {
  std::vector<double> stage_s;      // [stage] busy with its pass: compute and syncs
  std::vector<double> hand_over_s;  // [stage boundary] its activations to the next stage: latency + bytes / bandwidth
  std::vector<double> link_s;       // [stage boundary] of which the link is busy: bytes / bandwidth
  double token_return_s = 0;        // the new tokens from the last stage back to the first
};

double pipeline_round_seconds(const PipelinePass& pass, double micro_batches);
double pipeline_fill_seconds(const PipelinePass& pass, double micro_batches);

}  // namespace lowsync
