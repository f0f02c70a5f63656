#pragma once
// A rank that stops answering (stopped with SIGSTOP, its node frozen, its mpirun killed) leaves the
// others waiting inside an MPI call forever, busy-polling at 100% CPU. The watchdog turns that
// into an error: every MPI call the Communicator makes marks when it started, and a background
// thread aborts the job (MPI_Abort, every rank stops) when one has waited longer than the timeout,
// naming the rank, the group and the call. Off until started.
#include <string>

namespace lowsync::watchdog {

// Starts the watch on this rank: an MPI call still waiting after `seconds` aborts the job.
void start(double seconds, int world_rank);
void stop();

// Watches from construction to destruction (also when an exception leaves the scope).
struct Guard {
  Guard(double seconds, int world_rank) { start(seconds, world_rank); }
  ~Guard() { stop(); }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;
};

// Called by the Communicator around each call (cheap: a clock read and two stores).
void call_started(const std::string* group, const char* call);
void call_ended();

}  // namespace lowsync::watchdog
