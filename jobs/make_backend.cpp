#include "jobs/make_backend.h"

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <vector>

#include "io/safetensors.h"
#include "layers/cuda_backend.h"

namespace lowsync {

namespace {

// This rank's index among the ranks on its node, so that `auto` spreads a node's ranks over its GPUs.
int node_local_rank(const Communicator& world) { return world.split_by_host("node").rank(); }

DType weight_dtype(const CudaOptions& c) {
  if (c.dtype == "fp32") return DType::F32;
  if (c.dtype == "fp16") return DType::F16;
  return DType::BF16;  // the job config admits nothing else
}

DType weight_dtype(WeightsDType d) {
  switch (d) {
    case WeightsDType::BF16: return DType::BF16;
    case WeightsDType::F16: return DType::F16;
    case WeightsDType::Q8_0: return DType::Q8_0;
    case WeightsDType::Auto:  // resolved before (with_resolved_weights); fp32 is the safe reading
    case WeightsDType::F32: return DType::F32;
  }
  return DType::F32;
}

// The type holding most values of the checkpoint's matrices (2-D tensors): what `auto` keeps. A
// directory without safetensors (`lowsync profile` and `plan` need only config.json) gives fp32;
// `run` then refuses it when it reads the weights.
WeightsDType checkpoint_matrix_dtype(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (!fs::exists(fs::path(model_dir) / "model.safetensors") &&
      !fs::exists(fs::path(model_dir) / "model.safetensors.index.json"))
    return WeightsDType::F32;
  const CheckpointReader ckpt(model_dir);
  std::map<std::string, int64_t> values;
  for (const std::string& name : ckpt.names()) {
    const TensorInfo& t = ckpt.info(name);
    if (t.shape.size() == 2) values[t.dtype] += t.numel();
  }
  const auto most = std::max_element(values.begin(), values.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  if (most == values.end()) return WeightsDType::F32;
  if (most->first == "BF16") return WeightsDType::BF16;
  if (most->first == "F16") return WeightsDType::F16;
  return WeightsDType::F32;
}

// The cores this process may run on.
cpu_set_t affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) CPU_ZERO(&set);
  return set;
}

}  // namespace

// How many ranks of this host (this one included) may run on this rank's cores. Collective over `world`.
int ranks_sharing_cores(const Communicator& world, const cpu_set_t& mine) {
  Communicator node = world.split_by_host("node");
  std::vector<cpu_set_t> all(node.size());
  node.all_gather_bytes(&mine, sizeof mine, all.data());
  int sharing = 0;
  for (const cpu_set_t& other : all) {
    cpu_set_t both;
    CPU_AND(&both, &mine, &other);
    sharing += CPU_COUNT(&both) > 0;
  }
  return sharing;
}

int resolve_threads(const JobConfig& job, const Communicator& world) {
  if (job.threads != 0) return job.threads;
  const cpu_set_t mine = affinity();
  const int cores = std::max(1, CPU_COUNT(&mine));
  if (const char* s = std::getenv("SLURM_CPUS_PER_TASK")) {
    char* end = nullptr;
    const long n = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && n >= 1) return static_cast<int>(std::min<long>(n, cores));
  }
  return std::max(1, cores / std::max(1, ranks_sharing_cores(world, mine)));
}

SyncWait resolve_sync_wait(const JobConfig& job, const Communicator& world) {
  if (job.parallel.sync_wait != SyncWait::Auto) return job.parallel.sync_wait;
  const cpu_set_t mine = affinity();
  const int cores = std::max(1, CPU_COUNT(&mine));
  // Every sharing rank counted with this rank's threads: the job gives all ranks the same `threads`.
  const bool oversubscribed = int64_t(ranks_sharing_cores(world, mine)) * std::max(1, job.threads) > cores;
  return oversubscribed ? SyncWait::Sleep : SyncWait::Spin;
}

JobConfig with_resolved_weights(const JobConfig& job) {
  JobConfig resolved = job;
  if (job.backend == "cuda") {  // cuda.dtype decides (the job config refuses a different weights.dtype)
    parse_weights_dtype(job.cuda.dtype, resolved.weights_dtype);
  } else if (job.weights_dtype == WeightsDType::Auto) {
    resolved.weights_dtype = checkpoint_matrix_dtype(job.model);
  }
  return resolved;
}

JobConfig with_resolved_threads(const JobConfig& job, const Communicator& world) {
  JobConfig resolved = job;
  resolved.threads = resolve_threads(job, world);
  return resolved;
}

std::unique_ptr<Backend> make_backend(const JobConfig& job, const Communicator& world) {
  if (job.backend != "cuda")  // threads 0 (auto) unresolved: 1
    return make_cpu_backend(std::max(1, job.threads), weight_dtype(with_resolved_weights(job).weights_dtype),
                            job.weights_bf16_dot, job.weights_q8_dot);
  const int local_rank = node_local_rank(world);
  return make_cuda_backend(job.cuda.device_index(), weight_dtype(job.cuda), world.rank(), local_rank);
}

}  // namespace lowsync
