#pragma once
// A rank's own threads for its kernels (the few-rows matmul): `threads` - 1 workers plus the
// calling thread. Between tasks a worker spins for a few tens of microseconds (a decode step runs
// ~200 short parallel products back to back, and waking a sleeping thread costs ~10 us each), then
// blocks: it never busy-waits for long, as OpenMP's threads do by default, which on a node whose
// cores are shared (other ranks, OpenBLAS's own threads, other jobs) takes the core another needs
// (measured: 10x slower decode steps at 2 threads on a loaded 2-core machine).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace lowsync {

class WorkerThreads {
 public:
  explicit WorkerThreads(int threads);  // threads >= 1; 1: no workers, tasks run on the caller
  ~WorkerThreads();
  WorkerThreads(const WorkerThreads&) = delete;
  WorkerThreads& operator=(const WorkerThreads&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(t) for every t in [0, size()), t = 0 on the calling thread, and returns when all
  // have finished. task must not throw. One run at a time (the rank's compute thread calls it).
  void run(const std::function<void(int)>& task);
  // Runs item(i) once for every i in [0, count), each handed to whichever thread asks next rather
  // than in fixed slices: a thread the OS runs late (another process on its core) then takes
  // fewer items, instead of the others waiting for its share. Items must be independent.
  void run_items(int64_t count, const std::function<void(int64_t)>& item);

 private:
  void work(int index);

  std::mutex mutex_;
  std::condition_variable start_, finished_;
  std::atomic<const std::function<void(int)>*> task_{nullptr};
  std::atomic<int64_t> generation_{0};  // runs started; a worker runs each generation once
  std::atomic<int> pending_{0};         // workers still running the current generation
  bool quit_ = false;                   // under mutex_
  std::vector<std::thread> workers_;
};

}  // namespace lowsync
