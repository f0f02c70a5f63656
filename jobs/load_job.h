#pragma once
// What `run` and `calibrate` share before any batch: the model's config, the plan (from the job's
// parallel keys, a plan file, or the planner), the communicator groups of its grid, the backend
// and this rank's share of the weights. Every step is agreed by all ranks, so a setup error is
// printed once by rank 0 and every rank stops.
#include <functional>
#include <memory>

#include "io/job_config.h"
#include "io/model_config.h"
#include "layers/backend.h"
#include "layers/model.h"
#include "layers/peer_pool.h"
#include "mpi_comm/parallel_groups.h"
#include "planning/plan.h"

namespace lowsync {

struct LoadedJob {
  ModelConfig model;
  Plan plan;
  std::unique_ptr<ParallelGroups> groups;  // held by pointer: the transformer keeps its tp group's address
  std::unique_ptr<Backend> backend;
  std::unique_ptr<PoolLink> pool_link;      // memory.pool: peer: the layers' messages (before the transformer, which uses it)
  std::unique_ptr<Transformer> transformer;
  std::unique_ptr<PeerPoolServer> pool_server;  // memory.pool: peer, on a holder: peers' layers (stops before the link)
  double load_seconds = 0;
  int threads = 1;  // this rank's BLAS threads (`threads: auto` resolved)
  WeightsDType weights_dtype = WeightsDType::F32;  // how the weight matrices are stored (`auto` resolved)
};

// memory.limit in bytes and memory.pool. One limit for every rank: a share of the free memory is
// the smallest rank's share. A list, one per rank: a share is of that rank's own (its host's free
// memory split among the host's ranks). Collective over world.
MemoryBudget memory_budget(const JobConfig& job, Communicator& world);

// `check` runs (agreed) after the plan is made and before any weight is read: the command's own
// conditions on the model and plan.
LoadedJob load_job(const JobConfig& job, Communicator& world,
                   const std::function<void(const ModelConfig&, const Plan&)>& check);

}  // namespace lowsync
