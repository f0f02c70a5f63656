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

  // A decoupled model's coupled layer runs tensor-parallel over the same ranks: each takes the heads,
  // kv heads and FFN columns its sub-blocks hold in the other layers. python/decoupled/convert.py cuts
  // sub-block r from the original layer at the shares of the sub-blocks before it, so a rank's
  // sub-blocks [a, b) are the columns [sum of shares before a, + sum of its own).
  LayerShare coupled_share(const ModelConfig& cfg) const {
    const DecoupledSpec& bp = cfg.bp;
    auto columns = [&](const std::vector<int>& per_sub_block) {
      Span s;
      for (int r = 0; r < sub_blocks.end(); ++r) (r < sub_blocks.begin ? s.begin : s.count) += per_sub_block[r];
      return s;
    };
    return {columns(bp.heads), columns(bp.kv_heads), columns(bp.ffn), sub_blocks};
  }

  // Everything: one rank computing the whole replica.
  static LayerShare whole(const ModelConfig& cfg) {
    if (cfg.bp.enabled()) return {{}, {}, {}, {0, cfg.bp.sub_blocks}};
    return {{0, cfg.n_heads}, {0, cfg.n_kv_heads}, {0, cfg.intermediate}, {}};
  }
};

}  // namespace lowsync
