// The q8_0 x q8_0 decode product (layers/q8_dot_matmul.h) on every instruction set this CPU runs
// (AVX512_VNNI, AVX-VNNI, AVX2, scalar), against double loops over the quantised values:
// - the activations' quantisation is quantize_q8_0's (ggml's reference) bit for bit, ties included;
// - with every scale 1 the result is the exact integer dot product (int32 block sums, and fp32 sums
//   of integers below 2^24 are exact whatever their order);
// - on random data, within the fp32 summation bound of sum_b d_x d_w sum q_x q_w;
// at the edges of the tiling: 1-5, 31, 32, 33 rows, odd column counts (ragged groups of w and thread
// slices), K of an odd and even number of blocks (32 .. 1536), 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "layers/few_rows_matmul.h"
#include "layers/q8_dot_matmul.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::random_values;

std::vector<Q8DotLevel> levels_this_cpu_runs() {
  std::vector<Q8DotLevel> v;
  for (Q8DotLevel l : {Q8DotLevel::Scalar, Q8DotLevel::Avx2, Q8DotLevel::AvxVnni, Q8DotLevel::Avx512Vnni})
    if (cpu_runs(l)) v.push_back(l);
  return v;
}

// Weight rows of K / 32 blocks from fp32 values, as the CPU backend stores them.
std::vector<BlockQ8_0> quantised_rows(const std::vector<float>& w) {
  std::vector<BlockQ8_0> b(w.size() / kQ8_0Block);
  for (size_t i = 0; i < b.size(); ++i) b[i] = quantize_q8_0(w.data() + i * kQ8_0Block);
  return b;
}

TEST(Q8DotMatmul, LevelsNamed) {
  EXPECT_TRUE(cpu_runs(Q8DotLevel::Scalar));
  EXPECT_TRUE(cpu_runs(best_q8_dot_level()));
  for (Q8DotLevel l : levels_this_cpu_runs()) std::printf("q8_dot level this CPU runs: %s\n", q8_dot_level_name(l));
}

// Every level quantises x exactly as quantize_q8_0: random blocks, a zero block, tiny and large
// values, and halves (x / d = k + 1/2 exactly: they round away from zero).
TEST(Q8DotMatmul, QuantisesAsTheReference) {
  const int64_t K = 192, M = 4;
  std::vector<float> x = random_values(M * K, 11);
  for (int64_t k = 0; k < 32; ++k) x[32 + k] = 0.f;                       // row 0, block 1: all zero
  for (int64_t k = 0; k < 32; ++k) x[64 + k] *= 1e-30f;                   // tiny
  for (int64_t k = 0; k < 32; ++k) x[96 + k] *= 3e4f;                     // large
  for (int64_t k = 0; k < 32; ++k) x[K + k] = float(k % 2 ? 127 : 126) - 63.5f * (k % 3);  // d = 1: halves
  x[K + 5] = 127.f;
  for (int64_t k = 0; k < 32; ++k) x[K + 32 + k] = -0.5f - float(k);      // all negative
  for (Q8DotLevel level : levels_this_cpu_runs()) {
    Q8Activations a;
    quantize_activations(level, x.data(), M, K, a);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t b = 0; b < K / kQ8_0Block; ++b) {
        const BlockQ8_0 want = quantize_q8_0(x.data() + m * K + b * kQ8_0Block);
        const int64_t at = m * a.stride + b * kQ8_0Block;
        for (int64_t k = 0; k < kQ8_0Block; ++k) {
          ASSERT_EQ(a.q[at + k], want.q[k]) << q8_dot_level_name(level) << " row " << m << " block " << b << " " << k;
          ASSERT_EQ(a.abs_q[at + k], std::abs(want.q[k])) << q8_dot_level_name(level);
        }
        for (int64_t l = 0; l < 8; ++l)
          ASSERT_EQ(a.d8[(m * a.stride / kQ8_0Block + b) * 8 + l], to_float(want.d)) << q8_dot_level_name(level);
      }
  }
}

// Scales of 1 (each x block holds +-127, each w block's d is 1): the result is the integer dot
// product exactly. K <= 1024 keeps every partial sum below 2^24 (1024 x 127^2 < 2^24).
TEST(Q8DotMatmul, ExactIntegerSumsOnEveryLevel) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> value(-127, 127);
  for (int64_t K : {32, 96, 160, 1024})
    for (int64_t M : {1, 2, 3, 5, 31, 33})
      for (int64_t N : {1, 9, 13}) {
        std::vector<float> x(M * K);
        for (int64_t i = 0; i < M * K; ++i) x[i] = float(value(gen));
        for (int64_t i = 0; i < M * K; i += kQ8_0Block) x[i + i / kQ8_0Block % 32] = (i / kQ8_0Block) % 2 ? 127.f : -127.f;
        std::vector<BlockQ8_0> w(N * K / kQ8_0Block);
        for (BlockQ8_0& b : w) {
          b.d = to_half(1.f);
          for (int8_t& q : b.q) q = int8_t(value(gen));
          b.q[3] = -127;
          b.q[9] = 127;
        }
        for (int threads : {1, 2, 3}) {
          WorkerThreads workers(threads);
          for (Q8DotLevel level : levels_this_cpu_runs()) {
            std::vector<float> y(M * N, -1.f);
            Q8Activations scratch;
            q8_dot_matmul(level, workers, x.data(), M, K, w.data(), N, y.data(), false, scratch);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                int64_t want = 0;
                for (int64_t k = 0; k < K; ++k)
                  want += int64_t(x[m * K + k]) * w[n * K / kQ8_0Block + k / kQ8_0Block].q[k % kQ8_0Block];
                ASSERT_EQ(double(y[m * N + n]), double(want)) << q8_dot_level_name(level) << " M " << M << " K " << K
                                                              << " N " << N << " threads " << threads;
              }
          }
        }
      }
}

// Random x and w: within the fp32 summation bound of the double sum over the quantised values.
TEST(Q8DotMatmul, MatchesQuantisedValuesInDoubleOnEveryLevel) {
  for (int64_t M : {1, 2, 3, 4, 5, 31, 32, 33})
    for (int64_t K : {32, 64, 160, 576, 1536})
      for (int64_t N : {1, 5, 8, 13, 17}) {
        const std::vector<float> x = random_values(M * K, 1 + M * 7 + K), wf = random_values(N * K, 2 + N);
        const std::vector<BlockQ8_0> w = quantised_rows(wf);
        const std::vector<BlockQ8_0> xq = quantised_rows(x);  // rows of K / 32 blocks, as the kernel's
        const std::vector<float> bias = random_values(M * N, 3);
        const int64_t blocks = K / kQ8_0Block;
        std::vector<double> want(M * N), mass(M * N);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t b = 0; b < blocks; ++b) {
              const BlockQ8_0 &xb = xq[m * blocks + b], &wb = w[n * blocks + b];
              int64_t sum = 0, abs_sum = 0;
              for (int64_t k = 0; k < kQ8_0Block; ++k) {
                sum += int64_t(xb.q[k]) * wb.q[k];
                abs_sum += std::abs(int64_t(xb.q[k]) * wb.q[k]);
              }
              const double scale = double(to_float(xb.d)) * to_float(wb.d);
              want[m * N + n] += scale * double(sum);
              mass[m * N + n] += std::fabs(scale) * double(abs_sum);
            }
        for (int threads : {1, 3}) {
          WorkerThreads workers(threads);
          for (bool accumulate : {false, true})
            for (Q8DotLevel level : levels_this_cpu_runs()) {
              std::vector<float> y = accumulate ? bias : std::vector<float>(M * N, 0.f);
              Q8Activations scratch;
              q8_dot_matmul(level, workers, x.data(), M, K, w.data(), N, y.data(), accumulate, scratch);
              for (int64_t i = 0; i < M * N; ++i) {
                const double b = accumulate ? bias[i] : 0;
                // Block sums and scales are exact; at most K + 2 fp32 roundings (products by the
                // scale, additions in any order, the bias), each within u = 2^-24 of the total mass.
                const double bound = (K + 2) * std::ldexp(1.0, -24) * (mass[i] + std::fabs(b)) * 1.01 + 1e-30;
                ASSERT_NEAR(y[i], want[i] + b, bound) << q8_dot_level_name(level) << " M " << M << " K " << K << " N "
                                                      << N << " threads " << threads;
              }
            }
        }
      }
}

// Its deviation from the exact product (fp32 x, the few-rows kernel) is the activations' rounding:
// per element of x at most half a step plus the scale's fp16 rounding (127 x 2^-11 of a step),
// max |x_b| / 127 x 0.5625, times |w| summed.
TEST(Q8DotMatmul, WithinTheActivationRoundingOfTheExactProduct) {
  const int64_t M = 3, K = 576, N = 16;
  const std::vector<float> x = random_values(M * K, 21), wf = random_values(N * K, 22);
  const std::vector<BlockQ8_0> w = quantised_rows(wf);
  WorkerThreads workers(1);
  std::vector<float> exact(M * N), fast(M * N);
  few_rows_matmul(best_simd_level(), workers, x.data(), M, K, w.data(), N, exact.data(), false);
  Q8Activations scratch;
  q8_dot_matmul(best_q8_dot_level(), workers, x.data(), M, K, w.data(), N, fast.data(), false, scratch);
  const Q8_0Ptr wp{w.data()};
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double bound = 0;
      for (int64_t b = 0; b < K / kQ8_0Block; ++b) {
        double amax = 0, wsum = 0;
        for (int64_t k = b * kQ8_0Block; k < (b + 1) * kQ8_0Block; ++k) {
          amax = std::max(amax, double(std::fabs(x[m * K + k])));
          wsum += std::fabs(wp[n * K + k]);
        }
        bound += amax / 127 * 0.5625 * wsum;
      }
      EXPECT_NEAR(fast[m * N + n], exact[m * N + n], bound + 1e-4) << m << " " << n;
      EXPECT_NE(fast[m * N + n], exact[m * N + n]) << "the activations were not rounded";
    }
}

}  // namespace
}  // namespace lowsync
