#pragma once
// The model as one rank runs it: its pipeline stage's layers (a Transformer), the link to the
// other stages of its replica, and how many micro-batches each batch is split into. With one
// stage it is the whole model and a batch is one micro-batch.
#include <chrono>
#include <cstdint>
#include <vector>

#include "jobs/stage_link.h"
#include "layers/model.h"

namespace lowsync {

struct PipelineStage {
  Transformer& model;
  StageLink& link;
  int micro_batches = 1;

  // One pass of micro-batch m through this stage: the first stage embeds `tokens`, the others take
  // the previous stage's activations; every stage runs its layers; all but the last hand their
  // output on. Returns the last hidden state (after the final norm) on the last stage, an empty
  // tensor elsewhere.
  Tensor pass(int m, const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache) {
    Tensor x = link.first() ? model.embed(tokens, layout)
                            : link.receive_activations(m, layout.tokens(), model.config().hidden);
    const auto t0 = std::chrono::steady_clock::now();  // the wait for the previous stage is not this stage's
    auto seconds_since = [](auto t) { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(); };
    model.run_layers(x, layout, cache);
    if (!link.last()) {
      link.send_activations(m, x);
      last_compute_s = seconds_since(t0);
      return {};
    }
    model.finish(x);
    last_compute_s = seconds_since(t0);
    return x;
  }
  // The last pass's own time: its layers (and the end's norm, or the hand-over's copy), from its
  // input at hand; the micro-batch planner fits each stage's pass cost to it.
  double last_compute_s = 0;
};

// Rows [0, n) in `parts` contiguous groups as even as they go (fewer when n < parts).
inline std::vector<std::vector<size_t>> split_rows(size_t n, int parts) {
  const size_t k = std::max<size_t>(1, std::min<size_t>(n, static_cast<size_t>(std::max(parts, 1))));
  std::vector<std::vector<size_t>> out(k);
  for (size_t g = 0, i = 0; g < k; ++g)
    for (size_t c = 0; c < n / k + (g < n % k ? 1 : 0); ++c) out[g].push_back(i++);
  return out;
}

}  // namespace lowsync
