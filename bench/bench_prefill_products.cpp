// The prefill products of one SmolLM2-135M layer (q, k, v, o, gate, up, down on 512 rows of x by
// default) through the many-rows kernels: fp32 weights, bf16 weights widened while packing (exact,
// many_rows_matmul), and bf16 weights with x rounded to bf16 and vdpbf16ps (`weights.bf16_dot`,
// many_rows_bf16_dot, where the CPU has AVX512_BF16). Random values. Each figure is the minimum
// over --reps interleaved repetitions of the layer's time, as GFLOP/s and relative to fp32: at one
// thread the thread's CPU time (on a machine shared with other work, wall time measures the others
// as much as the kernel), at more the wall time (the minimum: the run least disturbed).
//
// --scaling: each product alone instead, at one thread and at --threads, wall time both, the two
// interleaved rep by rep, and their ratio: how a kernel scales with threads when nothing but its
// own work differs (its input and output resident, reused from rep to rep).
//
//   build/bench/bench_prefill_products [--threads 1] [--rows 512] [--reps 15] [--scaling]
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "layers/bf16_dot_matmul.h"
#include "layers/many_rows_bf16_dot.h"
#include "layers/many_rows_matmul.h"

using namespace lowsync;

namespace {

struct Shape {
  const char* name;
  int64_t N, K;  // y[M, N] = x[M, K] w[N, K]^T
};
// SmolLM2-135M: hidden 576, 9 query heads and 3 key-value heads of 64, FFN 1536.
constexpr Shape kLayer[] = {{"q", 576, 576},     {"k", 192, 576},     {"v", 192, 576},   {"o", 576, 576},
                            {"gate", 1536, 576}, {"up", 1536, 576},   {"down", 576, 1536}};

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 15;
  int64_t M = 512;
  bool scaling = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--scaling")) scaling = true;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) M = std::atoll(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "bench_prefill_products: unknown option %s (--threads N, --rows N, --reps N, --scaling)\n",
                   argv[i]);
      return 2;
    }
  }
  if (!many_rows_matmul_available()) {
    std::fprintf(stderr, "bench_prefill_products: no AVX-512 on this CPU (the many-rows kernels do not run)\n");
    return 2;
  }
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<BFloat16>> bf16;
  double flop = 0;
  for (const Shape& s : kLayer) {
    std::vector<float> w(s.N * s.K);
    for (float& v : w) v = u(gen);
    std::vector<BFloat16> b(w.size());
    for (size_t i = 0; i < w.size(); ++i) b[i] = to_bf16(w[i]);
    f32.push_back(std::move(w));
    bf16.push_back(std::move(b));
    flop += 2.0 * M * s.N * s.K;
  }
  std::vector<float> x(M * 1536), y(M * 1536);
  for (float& v : x) v = u(gen);
  WorkerThreads workers(threads);
  std::vector<const char*> names = {"fp32", "bf16 (widened)"};
  if (cpu_has_avx512_bf16()) names.push_back("bf16_dot");
  // Product i of the layer through kernel d on `on`'s threads.
  auto product = [&](size_t d, size_t i, WorkerThreads& on) {
    const Shape s = kLayer[i];
    if (d == 0) many_rows_matmul(on, x.data(), M, s.K, f32[i].data(), s.N, y.data(), false);
    if (d == 1) many_rows_matmul(on, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false);
    if (d == 2) many_rows_bf16_dot(on, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false);
  };
  if (scaling) {
    WorkerThreads one(1);
    std::printf("each product alone, %lld rows, best wall time of %d, 1 thread against %d:\n", (long long)M, reps,
                threads);
    for (size_t d = 0; d < names.size(); ++d)
      for (size_t i = 0; i < std::size(kLayer); ++i) {
        double best1 = 1e30, bestn = 1e30;
        for (int r = 0; r < reps; ++r) {
          double t0 = wall_seconds();
          product(d, i, one);
          best1 = std::min(best1, wall_seconds() - t0);
          t0 = wall_seconds();
          product(d, i, workers);
          bestn = std::min(bestn, wall_seconds() - t0);
        }
        std::printf("  %-15s %-5s %7.3f ms  %7.3f ms  %.2fx\n", names[d], kLayer[i].name, 1e3 * best1, 1e3 * bestn,
                    best1 / bestn);
      }
    return 0;
  }
  std::vector<double> best(names.size(), 1e30);
  double (*seconds)() = threads == 1 ? thread_seconds : wall_seconds;
  for (int r = 0; r < reps; ++r)
    for (size_t d = 0; d < names.size(); ++d) {
      const double t0 = seconds();
      for (size_t i = 0; i < std::size(kLayer); ++i) product(d, i, workers);
      best[d] = std::min(best[d], seconds() - t0);
    }
  std::printf("one SmolLM2 layer's prefill products, %lld rows, %d thread(s), best %s of %d:\n", (long long)M, threads,
              threads == 1 ? "thread CPU time" : "wall time", reps);
  for (size_t d = 0; d < names.size(); ++d)
    std::printf("  %-15s %7.2f ms  %6.1f GFLOP/s  %.2fx fp32\n", names[d], 1e3 * best[d], flop / best[d] * 1e-9,
                best[0] / best[d]);
  return 0;
}
