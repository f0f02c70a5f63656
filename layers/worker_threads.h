#pragma once
// A rank's own threads for its kernels (the few-rows matmul): `threads` - 1 workers that sleep
// until a task comes, plus the calling thread. They block instead of busy-waiting between tasks
// (as OpenMP's threads do by default): on a node whose cores are shared (other ranks, OpenBLAS's
// own threads, other jobs) a spinning thread takes the core another needs, and a decode step of
// ~100 short parallel products then waits a scheduler slice at each (measured: 10x slower steps
// at 2 threads on a loaded 2-core machine). Waking a sleeping worker costs some microseconds.
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

 private:
  void work(int index);

  std::mutex mutex_;
  std::condition_variable start_, finished_;
  const std::function<void(int)>* task_ = nullptr;
  int64_t generation_ = 0;  // runs started; a worker runs each generation once
  int pending_ = 0;         // workers still running the current generation
  bool quit_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace lowsync
