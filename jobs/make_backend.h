#pragma once
// The backend a job asks for (`backend`, `cuda.device`, `cuda.dtype`), on this rank.
#include <memory>

#include "io/job_config.h"
#include "layers/backend.h"
#include "mpi_comm/communicator.h"

namespace lowsync {

// Collective over `world` for backend: cuda (it finds each rank's node-local rank, which picks the
// GPU under cuda.device: auto). UserError when the backend cannot be had on this rank; call it
// inside Communicator::agree so that every rank learns of it.
std::unique_ptr<Backend> make_backend(const JobConfig& job, const Communicator& world);

}  // namespace lowsync
