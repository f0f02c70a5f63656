#pragma once
// The part of every layer that one rank of a replica computes, as the Plan states it (layers never
// decide it): a contiguous range of query heads with the key/value heads they read and a range of
// FFN columns (tensor parallelism), or a range of a decoupled model's sub-blocks (block
// parallelism). The same in every layer.
#include "io/model_config.h"

namespace lowsync {

struct Span {
  int begin = 0, count = 0;
  int end() const { return begin + count; }
};

struct LayerShare {
  Span heads, kv_heads, ffn;  // ordinary model: query heads, the kv heads they read, FFN columns
  Span sub_blocks;            // decoupled model: whole sub-blocks

  // Everything: one rank computing the whole replica.
  static LayerShare whole(const ModelConfig& cfg) {
    if (cfg.bp.enabled()) return {{}, {}, {}, {0, cfg.bp.sub_blocks}};
    return {{0, cfg.n_heads}, {0, cfg.n_kv_heads}, {0, cfg.intermediate}, {}};
  }
};

}  // namespace lowsync
