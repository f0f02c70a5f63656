#include "jobs/score_windows.h"

#include <algorithm>

namespace lowsync {

std::vector<ScoreWindow> score_windows(int64_t prompt, int64_t targets, const ScoreOptions& opt) {
  const int64_t n = prompt + targets;
  if (targets == 0) return {{0, prompt, prompt}};  // nothing to score: the prompt alone
  if (opt.window == 0 || n <= opt.window) return {{0, n - 1, prompt}};
  std::vector<ScoreWindow> out;
  int64_t scored_to = prompt;  // tokens before it are scored already (or are the prompt)
  for (int64_t begin = 0;; begin += opt.stride) {
    const int64_t end = std::min<int64_t>(begin + opt.window, n);  // the window: tokens [begin, end)
    // stride < window: scored_to > begin, so every target scored here has context.
    if (end > scored_to) out.push_back({begin, end - 1, std::max(scored_to, begin + 1)});
    scored_to = std::max(scored_to, end);
    if (end == n) break;
  }
  return out;
}

}  // namespace lowsync
