#pragma once
// `lowsync profile`'s measurements (planning/profile.h says what they mean): each rank's matrix
// products through the job's own backend on the model's own shapes, its memory read bandwidth and
// usable memory, and the all-reduce and point-to-point links between ranks, fitted as
// latency + bytes / bandwidth.
#include <vector>

#include "io/model_config.h"
#include "layers/backend.h"
#include "mpi_comm/communicator.h"
#include "planning/profile.h"

namespace lowsync {

// Collective over `world`; every rank returns the same Profile. `budget_s` is the wall time the
// measurements aim for (repeat counts and timing windows scale with it); a model whose single
// layer pass takes longer than its share is measured once per row count and overruns it.
// `world`'s communication counters are left as they were: profiling traffic is no job's traffic.
Profile measure_profile(const ModelConfig& model, Backend& be, Communicator& world, int prefill_rows, int decode_rows,
                        int threads, double budget_s);

// The memory this rank may use: what its host (and cgroups) still have, shared evenly by the ranks
// on the host. Collective over world.
int64_t usable_memory_bytes(Communicator& world);

// latency + bytes / bandwidth fitted to measured (bytes, seconds) samples, minimising the relative
// error; latency >= 0 and bandwidth > 0 always (see profiler.cpp for why and how).
LinkModel fit_link(const std::vector<LinkSample>& samples);

}  // namespace lowsync
