// The decode products of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down, then the 49152-row
// head) through the few-rows kernel with fp32, bf16 and q8_0 weights (random values), at 1 and 8
// rows of x. Timed in the thread's CPU time, the minimum of --reps interleaved repetitions: on a
// machine shared with other work, wall time measures the others as much as the kernel.
//
//   build/bench/bench_weight_kernels [--threads 1] [--reps 15]
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "layers/few_rows_matmul.h"

using namespace lowsync;

namespace {

struct Shape {
  int64_t N, K;
};

double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 1, reps = 15;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
  }
  std::vector<Shape> shapes;
  for (int l = 0; l < 30; ++l)
    for (Shape s : {Shape{576, 576}, Shape{192, 576}, Shape{192, 576}, Shape{576, 576}, Shape{1536, 576},
                    Shape{1536, 576}, Shape{576, 1536}})
      shapes.push_back(s);
  shapes.push_back({49152, 576});
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<std::vector<float>> f32;
  std::vector<std::vector<BFloat16>> bf16;
  std::vector<std::vector<BlockQ8_0>> q8;
  for (Shape s : shapes) {
    std::vector<float> w(s.N * s.K);
    for (float& v : w) v = u(gen);
    std::vector<BFloat16> b(w.size());
    for (size_t i = 0; i < w.size(); ++i) b[i] = to_bf16(w[i]);
    std::vector<BlockQ8_0> q(w.size() / kQ8_0Block);
    for (size_t i = 0; i < q.size(); ++i) q[i] = quantize_q8_0(w.data() + kQ8_0Block * i);
    f32.push_back(std::move(w));
    bf16.push_back(std::move(b));
    q8.push_back(std::move(q));
  }
  std::vector<float> x(8 * 1536), y(8 * 49152);
  for (float& v : x) v = u(gen);
  WorkerThreads workers(threads);
  const SimdLevel level = best_simd_level();
  const char* names[3] = {"fp32", "bf16", "q8_0"};
  for (int M : {1, 8}) {
    double best[3] = {1e30, 1e30, 1e30};
    for (int r = 0; r < reps; ++r)
      for (int d = 0; d < 3; ++d) {
        const double t0 = thread_seconds();
        for (size_t i = 0; i < shapes.size(); ++i) {
          const Shape s = shapes[i];
          if (d == 0) few_rows_matmul(level, workers, x.data(), M, s.K, f32[i].data(), s.N, y.data(), false);
          if (d == 1) few_rows_matmul(level, workers, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false);
          if (d == 2) few_rows_matmul(level, workers, x.data(), M, s.K, q8[i].data(), s.N, y.data(), false);
        }
        best[d] = std::min(best[d], thread_seconds() - t0);
      }
    std::printf("%s, %d thread(s), %d row(s) of x:", simd_level_name(level), threads, M);
    for (int d = 0; d < 3; ++d) std::printf("  %s %.1f ms (%.2fx)", names[d], 1e3 * best[d], best[0] / best[d]);
    std::printf("\n");
  }
}
