#include "jobs/make_backend.h"

#include "layers/cuda_backend.h"

namespace lowsync {

namespace {

// This rank's index among the ranks on its node, so that `auto` spreads a node's ranks over its GPUs.
int node_local_rank(const Communicator& world) {
  MPI_Comm node;
  if (MPI_Comm_split_type(world.raw(), MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node) != MPI_SUCCESS)
    throw MpiError("rank " + std::to_string(world.rank()) + ": MPI_Comm_split_type(SHARED) failed");
  return Communicator(node, "node").rank();
}

DType weight_dtype(const CudaOptions& c) {
  if (c.dtype == "fp32") return DType::F32;
  if (c.dtype == "fp16") return DType::F16;
  return DType::BF16;  // the job config admits nothing else
}

}  // namespace

std::unique_ptr<Backend> make_backend(const JobConfig& job, const Communicator& world) {
  if (job.backend != "cuda") return make_cpu_backend(job.threads);
  const int local_rank = node_local_rank(world);
  return make_cuda_backend(job.cuda.device_index(), weight_dtype(job.cuda), world.rank(), local_rank);
}

}  // namespace lowsync
