#pragma once
// Strided scoring of rows longer than a window (score.window, score.stride), as Hugging Face's
// perplexity guide and llama-perplexity do: windows of `window` tokens of prompt + targets start
// every `stride` tokens; each window goes through the model as a sequence of its own (positions
// from 0) and scores the targets no earlier window scored, so every target is scored exactly once,
// with up to window - 1 tokens of context.
#include <cstdint>
#include <vector>

#include "io/job_config.h"

namespace lowsync {

// Tokens [begin, fed_end) of prompt + targets go through the model; the logits at position t - 1
// give log p(token t) for the targets t in [first_scored, fed_end].
struct ScoreWindow {
  int64_t begin = 0, fed_end = 0, first_scored = 0;
};

// The windows of a row of `prompt` + `targets` tokens: one (the whole row, as without windows) when
// window is 0 or the row fits in it.
std::vector<ScoreWindow> score_windows(int64_t prompt, int64_t targets, const ScoreOptions& opt);

}  // namespace lowsync
