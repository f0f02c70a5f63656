#pragma once
// The CUDA backend's factory. This header exists in every build; in a build without CUDA (nvcc not
// found, or -DLOWSYNC_CUDA=OFF) the factory throws UserError saying so.
#include <memory>

#include "layers/backend.h"

namespace lowsync {

// A backend on CUDA device `device`, or with device = -1 on device local_rank % (visible devices),
// so that the ranks of a node spread over its GPUs and several ranks may share one. Weights are
// stored in `weight_dtype` (matrices; vectors stay fp32) and multiplied with fp32 accumulation;
// activations and the KV cache are fp32. `rank` (the world rank) only names the rank in errors.
// UserError when CUDA is not built or the device is not there.
std::unique_ptr<Backend> make_cuda_backend(int device, DType weight_dtype, int rank = 0, int local_rank = 0);

}  // namespace lowsync
