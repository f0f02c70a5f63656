#pragma once
// Log-probs of generated tokens. They are the model's own distribution, log_softmax(logits), before
// temperature, penalties and the top-k / top-p / min-p cuts (what vLLM reports, and transformers'
// `output_logits`), so that they do not depend on the sampling settings.
#include <cstdint>

#include "jobs/result_writer.h"
#include "layers/logit_summary.h"

namespace lowsync {

// Appends to row.token_logprobs log p(token), and to row.top_ids / row.top_logprobs the k most
// likely tokens with theirs (most likely first; ties by token id). logits [vocab].
void record_logprobs(const float* logits, int vocab, int token, int k, RowResult& row);

// Greedy from a row's summary (a split head, layers/logit_summary.h): returns its argmax and
// appends that token's log-prob to row.token_logprobs (no top alternatives: they need whole rows).
int32_t argmax_with_logprob(const LogitSummary& s, RowResult& row);

}  // namespace lowsync
