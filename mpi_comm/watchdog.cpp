#include "mpi_comm/watchdog.h"

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

namespace lowsync::watchdog {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_on{false};
std::atomic<int64_t> g_since{0};  // ns since the clock's epoch when the current call started; 0: none
std::atomic<const std::string*> g_group{nullptr};
std::atomic<const char*> g_call{nullptr};
std::thread g_thread;
std::mutex g_mutex;
std::condition_variable g_wake;
bool g_quit = false;

int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count(); }

}  // namespace

void start(double seconds, int world_rank) {
  if (seconds <= 0 || g_on) return;
  g_on = true;
  g_quit = false;
  g_thread = std::thread([seconds, world_rank] {
    // The wait is counted in this thread's own ticks, not in wall time: a rank that was itself
    // stopped (and is continued by mpirun on the way to killing it) has not been waiting, and
    // must not report too.
    constexpr double kTick = 0.5;
    int64_t watched = 0;
    int ticks = 0;
    std::unique_lock<std::mutex> lock(g_mutex);
    while (!g_wake.wait_for(lock, std::chrono::milliseconds(500), [] { return g_quit; })) {
      const int64_t since = g_since.load();
      ticks = since != 0 && since == watched ? ticks + 1 : 0;
      watched = since;
      if (since == 0 || ticks * kTick < seconds) continue;
      const std::string* group = g_group.load();
      const char* call = g_call.load();
      std::fprintf(stderr,
                   "lowsync: error: rank %d: waited %.0f s in MPI %s of group '%s' with no answer: another rank has "
                   "stopped or been lost (timeout: mpi.timeout); stopping every rank\n",
                   world_rank, (now_ns() - since) * 1e-9, call ? call : "?", group ? group->c_str() : "?");
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  });
}

void stop() {
  if (!g_on) return;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_quit = true;
  }
  g_wake.notify_all();
  g_thread.join();
  g_on = false;
}

void call_started(const std::string* group, const char* call) {
  if (!g_on.load(std::memory_order_relaxed)) return;
  g_group.store(group, std::memory_order_relaxed);
  g_call.store(call, std::memory_order_relaxed);
  g_since.store(now_ns(), std::memory_order_release);
}

void call_ended() {
  if (g_on.load(std::memory_order_relaxed)) g_since.store(0, std::memory_order_release);
}

}  // namespace lowsync::watchdog
