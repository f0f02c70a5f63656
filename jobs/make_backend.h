#pragma once
// The backend a job asks for (`backend`, `cuda.device`, `cuda.dtype`, `weights.dtype`), on this rank.
#include <memory>

#include "io/job_config.h"
#include "layers/backend.h"
#include "mpi_comm/communicator.h"

namespace lowsync {

// Collective over `world` for backend: cuda (it finds each rank's node-local rank, which picks the
// GPU under cuda.device: auto). UserError when the backend cannot be had on this rank; call it
// inside Communicator::agree so that every rank learns of it.
std::unique_ptr<Backend> make_backend(const JobConfig& job, const Communicator& world);

// The BLAS threads this rank uses: `threads` when it is a number; for `threads: auto`
// SLURM_CPUS_PER_TASK when set (at most the cores this rank may run on), else the cores this rank
// may run on (sched_getaffinity) divided by the ranks of this host that share them, at least 1.
// Collective over `world` when `threads` is auto (all ranks take the same branch, since they read
// the same job); throws only when MPI itself fails, so call it outside Communicator::agree.
int resolve_threads(const JobConfig& job, const Communicator& world);
// parallel.sync_wait on this rank: spin or sleep as the job says; auto sleeps when the ranks of
// this host that share this rank's cores, `threads` each (resolved), need more cores than it may
// run on, else spins. Collective over `world` for auto; call it outside Communicator::agree.
SyncWait resolve_sync_wait(const JobConfig& job, const Communicator& world);
// `job` with weights.dtype resolved: `auto` becomes the type most of the checkpoint's matrices are
// stored in (fp32, bf16 or fp16); with backend: cuda it is cuda.dtype. Reads the checkpoint's
// headers (UserError when they cannot be read: call it inside Communicator::agree).
JobConfig with_resolved_weights(const JobConfig& job);
// `job` with `threads` resolved on this rank; collective like resolve_threads.
JobConfig with_resolved_threads(const JobConfig& job, const Communicator& world);

}  // namespace lowsync
