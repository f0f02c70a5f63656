// The decode products of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down, then the 49152-row
// head) through the few-rows kernel with fp32, bf16 and q8_0 weights (random values), at 1 and 8
// rows of x; and, where the CPU has AVX512_BF16, an experimental bf16 kernel not in lowsync that
// rounds x to bf16 once per product and multiplies with vdpbf16ps (as llama.cpp's BF16 type does),
// with its largest deviation from the fp32-activation result; and lowsync's q8_dot kernel (x quantised
// to q8_0, int8 block products: layers/q8_dot_matmul.h) at each level this CPU runs but scalar. Timed in the thread's CPU time, the minimum of --reps interleaved repetitions: on a
// machine shared with other work, wall time measures the others as much as the kernel.
//
//   build/bench/bench_weight_kernels [--threads 1] [--reps 15]
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "layers/few_rows_matmul.h"
#include "layers/q8_dot_matmul.h"
#include "layers/weight_memory.h"

using namespace lowsync;

namespace {

// y[M, N] = bf16(x) w^T by vdpbf16ps: 4 rows of w x MR rows of x per tile, 32 products per
// instruction; K a multiple of 32, N of 4. One thread.
template <int MR>
__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) void dpbf16_tile(const uint16_t* xb, int64_t K,
                                                                                    const BFloat16* w, float* y,
                                                                                    int64_t ldy) {
  __m512 c[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 4; ++j) c[i][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh b[4];
    for (int j = 0; j < 4; ++j) b[j] = (__m512bh)_mm512_loadu_si512(w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_loadu_si512(xb + i * K + k);
      for (int j = 0; j < 4; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, b[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 4; ++j) y[i * ldy + j] = _mm512_reduce_add_ps(c[i][j]);
}

__attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl"))) void dpbf16_matmul(const float* x, int64_t M,
                                                                                     int64_t K, const BFloat16* w,
                                                                                     int64_t N, float* y,
                                                                                     std::vector<uint16_t>& xb) {
  xb.resize(M * K);
  for (int64_t i = 0; i < M * K; i += 32) {  // x to bf16 once per product (round to nearest even)
    const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(xb.data() + i, (__m512i)h);
  }
  for (int64_t n = 0; n < N; n += 4) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) dpbf16_tile<4>(xb.data() + m * K, K, w + n * K, y + m * N + n, N);
    for (; m < M; ++m) dpbf16_tile<1>(xb.data() + m * K, K, w + n * K, y + m * N + n, N);
  }
}

// n values of T in the CPU backend's weight memory (layers/weight_memory.h).
template <typename T>
class Stored {
 public:
  Stored(WeightMemory& memory, int64_t n) : mem_(memory.take(sizeof(T) * n)) {}
  T* data() const { return static_cast<T*>(mem_.get()); }
  T& operator[](int64_t i) const { return data()[i]; }

 private:
  std::shared_ptr<void> mem_;
};

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
  // Each precision's matrices in weight memory of its own, as the CPU backend keeps them (on huge
  // pages: with 4 KiB pages a 1-row product spends its time on page walks, and software prefetch
  // then pays where it does not in lowsync).
  WeightMemory f32_memory, bf16_memory, q8_memory;
  std::vector<Stored<float>> f32;
  std::vector<Stored<BFloat16>> bf16;
  std::vector<Stored<BlockQ8_0>> q8;
  for (Shape s : shapes) {
    Stored<float> w(f32_memory, s.N * s.K);
    for (int64_t i = 0; i < s.N * s.K; ++i) w[i] = u(gen);
    Stored<BFloat16> b(bf16_memory, s.N * s.K);
    for (int64_t i = 0; i < s.N * s.K; ++i) b[i] = to_bf16(w[i]);
    Stored<BlockQ8_0> q(q8_memory, s.N * s.K / kQ8_0Block);
    for (int64_t i = 0; i < s.N * s.K / kQ8_0Block; ++i) q[i] = quantize_q8_0(w.data() + kQ8_0Block * i);
    f32.push_back(w);
    bf16.push_back(b);
    q8.push_back(q);
  }
  std::vector<float> x(8 * 1536), y(8 * 49152);
  for (float& v : x) v = u(gen);
  WorkerThreads workers(threads);
  const SimdLevel level = best_simd_level();
  std::vector<const char*> names = {"fp32", "bf16", "q8_0"};
  std::vector<Q8DotLevel> q8_levels;
  for (Q8DotLevel l : {Q8DotLevel::Avx512Vnni, Q8DotLevel::AvxVnni, Q8DotLevel::Avx2})
    if (cpu_runs(l)) {
      q8_levels.push_back(l);
      names.push_back(q8_dot_level_name(l));
    }
  Q8Activations xq;
  for (int M : {1, 8}) {
    std::vector<double> best(names.size(), 1e30);
    for (int r = 0; r < reps; ++r)
      for (size_t d = 0; d < names.size(); ++d) {
        const double t0 = thread_seconds();
        for (size_t i = 0; i < shapes.size(); ++i) {
          const Shape s = shapes[i];
          if (d == 0) few_rows_matmul(level, workers, x.data(), M, s.K, f32[i].data(), s.N, y.data(), false);
          if (d == 1) few_rows_matmul(level, workers, x.data(), M, s.K, bf16[i].data(), s.N, y.data(), false);
          if (d == 2) few_rows_matmul(level, workers, x.data(), M, s.K, q8[i].data(), s.N, y.data(), false);
          if (d >= 3)
            q8_dot_matmul(q8_levels[d - 3], workers, x.data(), M, s.K, q8[i].data(), s.N, y.data(), false, xq);
        }
        best[d] = std::min(best[d], thread_seconds() - t0);
      }
    std::printf("%s, %d thread(s), %d row(s) of x:", simd_level_name(level), threads, M);
    for (size_t d = 0; d < names.size(); ++d)
      std::printf("%s  %s%s %.1f ms (%.2fx)", d == 3 ? "\n  q8_dot:" : "", names[d], d == 2 ? " (widening)" : "",
                  1e3 * best[d], best[0] / best[d]);
    std::printf("\n");
    if (!__builtin_cpu_supports("avx512bf16") || threads != 1) continue;
    std::vector<uint16_t> xb;
    std::vector<float> ref(M * 49152);
    double dp = 1e30, worst = 0;
    for (int r = 0; r < reps; ++r) {
      const double t0 = thread_seconds();
      for (size_t i = 0; i < shapes.size(); ++i)
        dpbf16_matmul(x.data(), M, shapes[i].K, bf16[i].data(), shapes[i].N, y.data(), xb);
      dp = std::min(dp, thread_seconds() - t0);
    }
    for (size_t i = 0; i < shapes.size(); i += 7) {  // deviation from fp32 activations, relative to sum |x w|
      const Shape sh = shapes[i];
      dpbf16_matmul(x.data(), M, sh.K, bf16[i].data(), sh.N, y.data(), xb);
      few_rows_matmul(level, workers, x.data(), M, sh.K, bf16[i].data(), sh.N, ref.data(), false);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < sh.N; ++n) {
          double mag = 0;
          for (int64_t k = 0; k < sh.K; ++k) mag += std::abs(x[m * sh.K + k] * to_float(bf16[i][n * sh.K + k]));
          worst = std::max(worst, std::abs(double(y[m * sh.N + n]) - ref[m * sh.N + n]) / mag);
        }
    }
    std::printf("  experimental vdpbf16ps (x rounded to bf16): %.1f ms (%.2fx fp32), largest |deviation| / sum |x w| %.1e\n",
                1e3 * dp, best[0] / dp, worst);
  }
}
