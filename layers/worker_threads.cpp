#include "layers/worker_threads.h"

#include <chrono>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace lowsync {

namespace {

// How long a thread polls before it blocks: longer than the gap between two products of a decode
// step, short against a scheduler slice.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// Polls `done` for up to kSpin; true when it became true.
template <class Done>
bool spin_until(Done done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
  }
}

}  // namespace

WorkerThreads::WorkerThreads(int threads) {
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
}

WorkerThreads::~WorkerThreads() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
    generation_.fetch_add(1, std::memory_order_release);  // spinning workers look, then see quit_
  }
  start_.notify_all();
  for (std::thread& w : workers_) w.join();
}

void WorkerThreads::run(const std::function<void(int)>& task) {
  if (workers_.empty()) {
    task(0);
    return;
  }
  {
    // Under the mutex, so that a worker about to block sees the new generation or is woken.
    std::lock_guard<std::mutex> lock(mutex_);
    task_.store(&task, std::memory_order_relaxed);
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  start_.notify_all();
  task(0);
  if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
  }
  task_.store(nullptr, std::memory_order_relaxed);
}

void WorkerThreads::run_items(int64_t count, const std::function<void(int64_t)>& item) {
  std::atomic<int64_t> next{0};
  run([&](int) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) item(i);
  });
}

void WorkerThreads::work(int index) {
  int64_t done = 0;  // the last generation this worker ran
  for (;;) {
    auto started = [&] { return generation_.load(std::memory_order_acquire) != done; };
    if (!spin_until(started)) {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return quit_ || started(); });
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (quit_) return;
    }
    done = generation_.load(std::memory_order_acquire);
    (*task_.load(std::memory_order_relaxed))(index);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);  // the caller may be between its check and its wait
      finished_.notify_one();
    }
  }
}

}  // namespace lowsync
