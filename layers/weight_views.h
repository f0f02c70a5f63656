#pragma once
// A tensor-parallel share of layers a rank already holds whole, without reading the checkpoint
// again (the runtime planner's tp tail: every rank of a dp job holds the whole model, and the
// replicas join into one tp group for the job's last rows). Weights are stored [out, in]:
//   column-parallel (Q, K, V, FFN up/gate, their biases): the share's rows, a view into the same
//     memory (no copy);
//   row-parallel (attention out, FFN down): the share's columns, strided in memory, copied once
//     (1/R of those two matrices per layer: the matmul kernels take contiguous weights);
//   the rest (norms, row-parallel biases): the same tensors.
#include <cstdint>

#include "io/model_config.h"
#include "layers/layer_share.h"
#include "layers/model.h"

namespace lowsync {

// `copied_bytes` grows by the bytes the column copies take. UserError when the weights are not fp32
// in host memory (backend cpu).
LayerWeights share_view(const LayerWeights& whole, const ModelConfig& cfg, const LayerShare& share, Backend& be,
                        int64_t& copied_bytes);

}  // namespace lowsync
