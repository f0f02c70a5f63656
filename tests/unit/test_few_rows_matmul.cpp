// The few-rows matmul (layers/few_rows_matmul.h) against a naive double-precision loop, on every
// instruction set this CPU runs, at the edges of its tiling: 1, 31, 32 and 33 rows (kFewRows is
// 32; the kernel itself takes any M), odd column counts (ragged 4-column blocks and thread
// slices), odd K (masked SIMD tails), 1-8 threads.
#include <gtest/gtest.h>
#include <immintrin.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "layers/few_rows_matmul.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::keep;
using test::narrowed;
using test::random_values;

std::vector<SimdLevel> levels_this_cpu_runs() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512})
    if (cpu_runs(l)) out.push_back(l);
  return out;
}

// y = x w^T in double, with the error bound of any fp32 summation order of K products: each
// result within gamma_K * sum_k |x_mk w_nk| (gamma_K = K u / (1 - K u), u = 2^-24; Higham,
// Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5), rounding of the products
// included.
struct Reference {
  std::vector<double> y, bound;
};
template <typename W>
Reference naive(const std::vector<float>& x, int64_t M, int64_t K, const std::vector<W>& w, int64_t N,
                const std::vector<float>& y0) {
  const double u = std::ldexp(1.0, -24), gamma = (K + 1) * u / (1 - (K + 1) * u);
  Reference r{std::vector<double>(M * N), std::vector<double>(M * N)};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double d = y0.empty() ? 0 : y0[m * N + n], a = y0.empty() ? 0 : std::abs(y0[m * N + n]);
      for (int64_t k = 0; k < K; ++k) {
        d += double(x[m * K + k]) * to_float(w[n * K + k]);
        a += std::abs(double(x[m * K + k]) * to_float(w[n * K + k]));
      }
      r.y[m * N + n] = d;
      r.bound[m * N + n] = gamma * a + std::numeric_limits<float>::denorm_min();
    }
  return r;
}


template <typename W>
void check_every_path(W (*to)(float), const char* type) {
  const std::vector<SimdLevel> levels = levels_this_cpu_runs();
  ASSERT_EQ(levels.back(), best_simd_level());
  for (SimdLevel level : levels) {
    for (int64_t M : {1, 2, 3, 31, 32, 33})
      for (int64_t N : {1, 3, 5, 33, 67})
        for (int64_t K : {1, 7, 16, 17, 100, 257}) {
          const auto x = random_values(M * K, 1 + M);
          const std::vector<W> w = narrowed(random_values(N * K, 2 + N), to);
          const Reference ref = naive(x, M, K, w, N, {});
          std::vector<float> at_one_thread;
          for (int threads : {1, 2, 3, 8}) {
            WorkerThreads workers(threads);
            std::vector<float> y(M * N, std::nanf(""));  // every element must be written
            few_rows_matmul(level, workers, x.data(), M, K, w.data(), N, y.data(), false);
            for (int64_t i = 0; i < M * N; ++i)
              ASSERT_LE(std::abs(y[i] - ref.y[i]), ref.bound[i])
                  << type << " " << simd_level_name(level) << " M=" << M << " N=" << N << " K=" << K
                  << " threads=" << threads << " element " << i;
            // Threads split columns, never a dot product: the same bits at any thread count.
            if (threads == 1)
              at_one_thread = y;
            else
              ASSERT_EQ(y, at_one_thread) << type << " " << simd_level_name(level) << " M=" << M << " N=" << N
                                          << " K=" << K << " threads=" << threads;
          }
        }
  }
}

TEST(FewRowsMatmul, MatchesNaiveLoopOnEveryPathThisCpuRuns) { check_every_path(keep, "fp32"); }
TEST(FewRowsMatmul, Bf16WeightsMatchNaiveLoopOnEveryPathThisCpuRuns) { check_every_path(to_bf16, "bf16"); }
TEST(FewRowsMatmul, Fp16WeightsMatchNaiveLoopOnEveryPathThisCpuRuns) { check_every_path(to_half, "fp16"); }

// Q8_0 weights: rows quantised block by block; the kernel against the naive loop on the
// dequantised values (q x d, exact in fp32), K whole blocks.
TEST(FewRowsMatmul, Q8_0WeightsMatchNaiveLoopOnEveryPathThisCpuRuns) {
  for (SimdLevel level : levels_this_cpu_runs())
    for (int64_t M : {1, 2, 3, 31, 32, 33})
      for (int64_t N : {1, 3, 5, 33, 67})
        for (int64_t K : {32, 64, 96, 288}) {
          const auto x = random_values(M * K, 1 + M), wf = random_values(N * K, 2 + N);
          std::vector<BlockQ8_0> w(N * K / kQ8_0Block);
          for (size_t b = 0; b < w.size(); ++b) w[b] = quantize_q8_0(wf.data() + b * kQ8_0Block);
          std::vector<float> dequantised(N * K);
          for (int64_t i = 0; i < N * K; ++i) dequantised[i] = Q8_0Ptr{w.data()}[i];
          const Reference ref = naive(x, M, K, dequantised, N, {});
          for (int threads : {1, 3}) {
            WorkerThreads workers(threads);
            std::vector<float> y(M * N, std::nanf(""));
            few_rows_matmul(level, workers, x.data(), M, K, w.data(), N, y.data(), false);
            for (int64_t i = 0; i < M * N; ++i)
              ASSERT_LE(std::abs(y[i] - ref.y[i]), ref.bound[i])
                  << "q8_0 " << simd_level_name(level) << " M=" << M << " N=" << N << " K=" << K << " element " << i;
          }
        }
}

// A block's scale is its largest magnitude / 127 (as fp16), that value quantises to +-127, and
// every value is within half a step (plus the scale's fp16 rounding) of its dequantised self.
TEST(NarrowFloat, Q8_0Blocks) {
  const auto v = random_values(32 * 100, 13);
  for (int64_t b = 0; b < 100; ++b) {
    const float* x = v.data() + b * 32;
    const BlockQ8_0 q = quantize_q8_0(x);
    float amax = 0;
    int qmax = 0;
    for (int i = 0; i < 32; ++i) {
      amax = std::max(amax, std::abs(x[i]));
      qmax = std::max(qmax, std::abs(int(q.q[i])));
    }
    ASSERT_EQ(q.d.bits, to_half(amax / 127.f).bits);
    ASSERT_EQ(qmax, 127);
    const float d = to_float(q.d);
    for (int i = 0; i < 32; ++i) ASSERT_LE(std::abs(Q8_0Ptr{&q}[i] - x[i]), 0.5f * d + 127 * std::abs(d - amax / 127.f));
  }
  const float zeros[32] = {};
  const BlockQ8_0 z = quantize_q8_0(zeros);
  EXPECT_EQ(z.d.bits, 0);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(z.q[i], 0);
}

// The same for q8_0 and bf16 weights (q8_0 takes 8 rows of w per tile at 1-2 rows of x, 4 otherwise).
TEST(FewRowsMatmul, NarrowRowResultIndependentOfBatch) {
  for (SimdLevel level : levels_this_cpu_runs()) {
    const int64_t M = 33, N = 21, K = 96;
    const auto x = random_values(M * K, 8), wf = random_values(N * K, 9);
    std::vector<BlockQ8_0> q(N * K / kQ8_0Block);
    for (size_t b = 0; b < q.size(); ++b) q[b] = quantize_q8_0(wf.data() + b * kQ8_0Block);
    const std::vector<BFloat16> h = narrowed(wf, to_bf16);
    WorkerThreads single(1);
    std::vector<float> all(M * N), one(2 * N);
    for (int type = 0; type < 2; ++type) {
      auto product = [&](const float* xs, int64_t rows, float* y) {
        if (type == 0) few_rows_matmul(level, single, xs, rows, K, q.data(), N, y, false);
        else few_rows_matmul(level, single, xs, rows, K, h.data(), N, y, false);
      };
      product(x.data(), M, all.data());
      for (int64_t m = 0; m + 1 < M; ++m)
        for (int64_t rows : {1, 2}) {
          product(x.data() + m * K, rows, one.data());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t n = 0; n < N; ++n)
              ASSERT_EQ(one[r * N + n], all[(m + r) * N + n]) << (type ? "bf16 " : "q8_0 ") << simd_level_name(level)
                                                              << " row " << m + r;
        }
    }
  }
}

// Every finite half converts to fp32 as the CPU's own F16C instruction does, and back to itself;
// fp32 values between two halves round to the nearer (ties to the even one), as F16C's
// round-to-nearest conversion does.
__attribute__((target("f16c"))) float f16c_to_float(uint16_t b) { return _cvtsh_ss(b); }
__attribute__((target("f16c"))) uint16_t f16c_to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

TEST(NarrowFloat, HalfConversionsMatchF16c) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if (((b >> 10) & 0x1f) == 31) continue;  // inf, NaN
    const Half h{uint16_t(b)};
    ASSERT_EQ(float_bits(to_float(h)), float_bits(f16c_to_float(uint16_t(b)))) << b;
    ASSERT_EQ(to_half(to_float(h)).bits, b) << b;
  }
  const auto v = random_values(100000, 11);
  for (float f : v)
    for (float s : {1.f, 1e-5f, 3e-8f, 6e4f}) ASSERT_EQ(to_half(f * s).bits, f16c_to_half(f * s)) << f * s;
}

// bf16: the top 16 bits of an fp32, rounded to nearest (ties to even).
TEST(NarrowFloat, Bf16RoundsToNearestEven) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if (((b >> 7) & 0xff) == 0xff) continue;
    ASSERT_EQ(to_bf16(to_float(BFloat16{uint16_t(b)})).bits, b);
  }
  EXPECT_EQ(to_bf16(bits_float(0x3f808000)).bits, 0x3f80);  // tie: down to even
  EXPECT_EQ(to_bf16(bits_float(0x3f818000)).bits, 0x3f82);  // tie: up to even
  EXPECT_EQ(to_bf16(bits_float(0x3f808001)).bits, 0x3f81);  // above the tie
  for (float f : random_values(100000, 12)) {
    const float r = to_float(to_bf16(f));
    ASSERT_LE(std::abs(r - f), std::ldexp(std::abs(f), -8)) << f;  // half an ulp of 8 significant bits
  }
}

TEST(FewRowsMatmul, AccumulatesIntoY) {
  for (SimdLevel level : levels_this_cpu_runs()) {
    const int64_t M = 5, N = 7, K = 19;
    const auto x = random_values(M * K, 3), w = random_values(N * K, 4), y0 = random_values(M * N, 5);
    const Reference ref = naive(x, M, K, w, N, y0);
    std::vector<float> y = y0;
    WorkerThreads two(2);
    few_rows_matmul(level, two, x.data(), M, K, w.data(), N, y.data(), true);
    for (int64_t i = 0; i < M * N; ++i) ASSERT_LE(std::abs(y[i] - ref.y[i]), ref.bound[i]) << simd_level_name(level);
  }
}

// A row's result does not depend on the other rows of its batch (the batch-independence the
// generate tests rely on): row m of a 33-row product is bit-equal to that row computed alone.
TEST(FewRowsMatmul, RowResultIndependentOfBatch) {
  for (SimdLevel level : levels_this_cpu_runs()) {
    const int64_t M = 33, N = 13, K = 45;
    const auto x = random_values(M * K, 6), w = random_values(N * K, 7);
    std::vector<float> all(M * N), one(N);
    WorkerThreads single(1);
    few_rows_matmul(level, single, x.data(), M, K, w.data(), N, all.data(), false);
    for (int64_t m = 0; m < M; ++m) {
      few_rows_matmul(level, single, x.data() + m * K, 1, K, w.data(), N, one.data(), false);
      for (int64_t n = 0; n < N; ++n) ASSERT_EQ(one[n], all[m * N + n]) << simd_level_name(level) << " row " << m;
    }
  }
}

}  // namespace
}  // namespace lowsync
