#pragma once
// How a rank waits inside its group's per-pass syncs (parallel.sync_wait).
//   Spin:  MPI's blocking call, which polls until the sync completes: the lowest latency while every
//          rank has a core of its own.
//   Sleep: the non-blocking call, polled for a short while (mpi_comm/communicator.cpp), then polled
//          between short sleeps: a waiting rank gives its core to the ranks (or other work) sharing
//          it, where a spinning one holds it until the scheduler preempts it.
//   Auto:  Sleep when the ranks on a host need more cores than it has, else Spin; resolved by the
//          job (jobs/make_backend.h, resolve_sync_wait) before any sync.
#include <string>

namespace lowsync {

enum class SyncWait { Spin, Sleep, Auto };

const char* sync_wait_name(SyncWait w);  // "spin" | "sleep" | "auto"
bool parse_sync_wait(const std::string& s, SyncWait& out);

}  // namespace lowsync
