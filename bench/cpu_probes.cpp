// CPU machine probes: OpenBLAS sgemm on the engine's shapes and a single-threaded memory-bandwidth
// read. Why a read: a decode step at batch 1 is a chain of matrix-vector products that stream
// every weight from memory once and write almost nothing (a few KB of activations), so the rate a
// single core can read a buffer far larger than the caches is the ceiling for weight bytes/s.
// A copy (read + write of equal size) is also measured and reported, not used as the denominator.
// Both buffers come from the weights' own allocator (WeightMemory: 2 MiB pages where the kernel
// grants them), so the probe reads memory as a decode step reads its weights: on 4 KiB pages one
// core reads 28 GB/s here, against 40 GB/s on 2 MiB pages, and the decode "efficiency" against a
// 4 KiB-page probe read above 1.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "bench/machine_probes.h"
#include "layers/weight_memory.h"

extern "C" char* openblas_get_config(void);
extern "C" char* openblas_get_corename(void);

namespace lowsync::bench {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::vector<float> random_floats(int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Sum of a buffer with 8 independent vector accumulators (enough loads in flight that the loop is
// bound by memory, not by the add latency). Returns the sum so the compiler keeps the reads.
typedef float v8f __attribute__((vector_size(32)));
float stream_sum(const float* p, int64_t n) {
  v8f acc[8] = {};
  const int64_t step = 64;
  int64_t i = 0;
  for (; i + step <= n; i += step)
    for (int j = 0; j < 8; ++j) {
      v8f x;
      std::memcpy(&x, p + i + 8 * j, sizeof x);
      acc[j] += x;
    }
  float s = 0;
  for (int j = 0; j < 8; ++j)
    for (int k = 0; k < 8; ++k) s += acc[j][k];
  for (; i < n; ++i) s += p[i];
  return s;
}

class CpuProbes final : public MachineProbes {
 public:
  CpuProbes(int threads, int64_t buffer_bytes) : threads_(threads) {
    openblas_set_num_threads(threads);
    n_ = buffer_bytes / int64_t(sizeof(float));
    src_ = std::static_pointer_cast<float>(memory_.take(size_t(n_) * sizeof(float)));
    dst_ = std::static_pointer_cast<float>(memory_.take(size_t(n_) * sizeof(float)));
    std::fill_n(src_.get(), n_, 1.f);  // touched: the pages exist before anything is timed
    std::fill_n(dst_.get(), n_, 0.f);
  }

  nlohmann::json info() const override {
    return {{"device", "cpu"},
            {"cpu_model", cpu_model()},
            {"nproc", std::thread::hardware_concurrency()},
            {"blas", std::string(openblas_get_config())},
            {"blas_core", std::string(openblas_get_corename())},
            {"blas_threads", threads_},
            {"bandwidth_buffer_bytes", n_ * int64_t(sizeof(float))},
            {"bandwidth_buffer_pages", "as the weights' (2 MiB where granted)"}};
  }

  double gemm_seconds(const GemmShape& s, int reps) override {
    // Operands of exactly the engine's layout: x [M, K], w [N, K] used transposed, y [M, N].
    const std::vector<float> x = random_floats(s.M * s.K, 1), w = random_floats(s.N * s.K, 2);
    std::vector<float> y(s.M * s.N);
    auto once = [&] {
      const auto t0 = Clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.M, s.N, s.K, 1.f, x.data(), s.K, w.data(), s.K, 0.f,
                  y.data(), s.N);
      return seconds_since(t0);
    };
    once();  // warm-up: page faults, OpenBLAS buffers
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) t.push_back(once());
    return *std::min_element(t.begin(), t.end());
  }

  double read_bandwidth(int reps) override {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      sink_ = sink_ + stream_sum(src_.get(), n_);
      t.push_back(seconds_since(t0));
    }
    return double(n_ * int64_t(sizeof(float))) / *std::min_element(t.begin(), t.end());
  }

  double copy_bandwidth(int reps) override {
    std::vector<double> t;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      std::memcpy(dst_.get(), src_.get(), size_t(n_) * sizeof(float));
      t.push_back(seconds_since(t0));
      sink_ = sink_ + dst_.get()[r];
    }
    return 2.0 * double(n_ * int64_t(sizeof(float))) / *std::min_element(t.begin(), t.end());
  }

 private:
  int threads_;
  WeightMemory memory_;
  int64_t n_ = 0;                      // floats in each buffer
  std::shared_ptr<float> src_, dst_;
  volatile float sink_ = 0;
};

}  // namespace

std::unique_ptr<MachineProbes> make_cpu_probes(int threads, int64_t buffer_bytes) {
  return std::make_unique<CpuProbes>(threads, buffer_bytes);
}

}  // namespace lowsync::bench
