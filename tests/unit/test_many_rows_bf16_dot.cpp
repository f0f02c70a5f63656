// The many-rows bf16 product (layers/many_rows_bf16_dot.h) against a naive double-precision loop
// over the same bf16-rounded x and bf16 w, at the edges of its tiling: rows over the decode-sized
// limit (33, 47, 100: full and ragged 14-row tiles), columns around its 32-column panel (1, 31,
// 32, 33, 67, 100), k even and odd, inside one 768-value block and across blocks (1, 2, 7, 33,
// 576, 768, 769, 1600), 1-3 threads, with and without a bias; and what it promises beyond the
// bound: the rounding is to_bf16's, a row's result is the same bits whatever the other rows and
// the thread count. Skipped where the CPU has no AVX512_BF16 (the backend then keeps the widening
// path on the same rounded x).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "layers/bf16_dot_matmul.h"
#include "layers/many_rows_bf16_dot.h"
#include "tests/unit/bf16_dot_reference.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::narrowed;
using test::bf16_rounded_x_dot;
using test::DotReference;
using test::random_values;

class ManyRowsBf16Dot : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512_BF16 on this CPU: the backend keeps the widening path";
  }
};

TEST_F(ManyRowsBf16Dot, MatchesRoundedXInDouble) {
  for (int64_t M : {33, 47, 100})
    for (int64_t K : {1, 2, 7, 33, 576, 768, 769, 1600})
      for (int64_t N : {1, 31, 32, 33, 67, 100}) {
        const auto x = random_values(M * K, 1 + M + 7 * K);
        const std::vector<BFloat16> w = narrowed(random_values(N * K, 2 + N), to_bf16);
        const auto bias = random_values(M * N, 3);
        std::vector<float> at_one_thread;
        for (int threads : {1, 2, 3})
          for (bool accumulate : {false, true}) {
            WorkerThreads workers(threads);
            std::vector<float> y = accumulate ? bias : std::vector<float>(M * N, std::nanf(""));
            many_rows_bf16_dot(workers, x.data(), M, K, w.data(), N, y.data(), accumulate);
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                const DotReference want =
                    bf16_rounded_x_dot(&x[m * K], &w[n * K], K, accumulate ? bias[m * N + n] : 0);
                // A bf16 x bf16 product is exact in fp32 (8 x 8 significand bits); only the K
                // fp32 additions round, in whatever order vdpbf16ps takes a pair: the bound of any
                // fp32 summation order (Higham, eq. 3.5), gamma_{K+1} u = 2^-24, of the sum of
                // magnitudes. vdpbf16ps flushes subnormals (inputs and results) to zero: at most
                // 2^-126 per addition more, (K + 1) 2^-126 in all.
                const double u = std::ldexp(1.0, -24), gamma = (K + 1) * u / (1 - (K + 1) * u);
                const double bound = gamma * want.magnitude + (K + 1) * std::ldexp(1.0, -126);
                ASSERT_NEAR(y[m * N + n], want.value, bound)
                    << "M " << M << " K " << K << " N " << N << " threads " << threads << (accumulate ? " +bias" : "")
                    << " at (" << m << ", " << n << ")";
              }
            // Threads split columns, never a dot product: the same bits at any thread count.
            if (accumulate) continue;
            if (threads == 1)
              at_one_thread = y;
            else
              ASSERT_EQ(y, at_one_thread) << "M " << M << " K " << K << " N " << N << " threads " << threads;
          }
      }
}

// w = the identity (N = K): y[m][j] = bf16(x[m][j]) x 1 plus exact zeros, so y is the rounded x
// itself, bit for bit: the rounding is to_bf16's (round to nearest, ties to even; the vector path
// for 32 values at a time and the scalar one for the rest), and every value lands in its place.
// Ties are planted: 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7 and rounds to 1 (even),
// 1 + 3 x 2^-8 halfway between 1 + 2^-7 and 1 + 2^-6 and rounds up to 1 + 2^-6 (even).
TEST_F(ManyRowsBf16Dot, RoundsActivationsAsToBf16) {
  const int64_t M = 33, K = 67, N = K;
  auto x = random_values(M * K, 11);
  for (int64_t m = 0; m < M; ++m) {
    x[m * K + m % K] = 1 + std::ldexp(1.f, -8);
    x[m * K + (m + 40) % K] = -(1 + 3 * std::ldexp(1.f, -8));
  }
  std::vector<BFloat16> eye(N * K, to_bf16(0.f));
  for (int64_t j = 0; j < N; ++j) eye[j * K + j] = to_bf16(1.f);
  for (int threads : {1, 2}) {
    WorkerThreads workers(threads);
    std::vector<float> y(M * N, std::nanf(""));
    many_rows_bf16_dot(workers, x.data(), M, K, eye.data(), N, y.data(), false);
    for (int64_t i = 0; i < M * K; ++i) ASSERT_EQ(y[i], to_float(to_bf16(x[i]))) << "element " << i << " x " << x[i];
  }
  EXPECT_EQ(to_float(to_bf16(1 + std::ldexp(1.f, -8))), 1.f);
  EXPECT_EQ(to_float(to_bf16(-(1 + 3 * std::ldexp(1.f, -8)))), -(1 + std::ldexp(1.f, -6)));
}

// A row's result does not depend on which other rows share the product (nor on its tile).
TEST_F(ManyRowsBf16Dot, RowResultIndependentOfBatch) {
  const int64_t M = 100, N = 45, K = 301;
  const auto x = random_values(M * K, 8);
  const std::vector<BFloat16> w = narrowed(random_values(N * K, 9), to_bf16);
  WorkerThreads single(1), two(2);
  std::vector<float> all(M * N), part(M * N);
  many_rows_bf16_dot(single, x.data(), M, K, w.data(), N, all.data(), false);
  for (int64_t m0 : {0, 5, 17, 60})
    for (int64_t rows : {33, 35, 40}) {
      if (m0 + rows > M) continue;
      many_rows_bf16_dot(two, x.data() + m0 * K, rows, K, w.data(), N, part.data(), false);
      for (int64_t i = 0; i < rows * N; ++i) ASSERT_EQ(part[i], all[m0 * N + i]) << "rows " << m0 << "+" << rows;
    }
}

}  // namespace
}  // namespace lowsync
