// The CUDA backend's factory in a build without CUDA: a job asking for it gets one clear line.
#include "io/error.h"
#include "layers/cuda_backend.h"

namespace lowsync {

std::unique_ptr<Backend> make_cuda_backend(int, DType, int, int) {
  throw UserError("backend: cuda: this lowsync was built without CUDA (nvcc not found at build time, or "
                  "-DLOWSYNC_CUDA=OFF); rebuild where nvcc is installed, or use backend: cpu");
}

}  // namespace lowsync
