// The bf16-activation decode product (layers/bf16_dot_matmul.h) against a naive double-precision
// loop over the same bf16-rounded x and bf16 w, on both of its paths this CPU runs (vdpbf16ps where
// it has AVX512_BF16; the widening kernel always), at the edges of its tiling: 1-5, 31 and 32 rows,
// odd column counts (ragged 4-row blocks of w and thread slices), K with a masked last block of 32
// (688, 33, 7) or none (576, 1536: SmolLM2's; 128), 1-3 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "layers/bf16_dot_matmul.h"
#include "tests/unit/bf16_dot_reference.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::bf16_rounded_x_dot;
using test::DotReference;
using test::random_values;

TEST(Bf16DotMatmul, MatchesRoundedXInDoubleOnEveryPath) {
  std::vector<bool> paths = {false};
  if (cpu_has_avx512_bf16()) paths.push_back(true);
  const SimdLevel level = best_simd_level();
  std::vector<BFloat16> scratch;
  for (int64_t M : {1, 2, 3, 4, 5, 31, 32})
    for (int64_t K : {576, 1536, 128, 688, 33, 7})
      for (int64_t N : {1, 5, 8, 13})
        for (int threads : {1, 3}) {
          WorkerThreads workers(threads);
          const std::vector<float> x = random_values(M * K, 1 + M * 7 + K), wf = random_values(N * K, 2 + N);
          std::vector<BFloat16> w(N * K);
          for (int64_t i = 0; i < N * K; ++i) w[i] = to_bf16(wf[i]);
          std::vector<float> bias = random_values(M * N, 3);
          for (bool accumulate : {false, true})
            for (bool dp : paths) {
              std::vector<float> y = accumulate ? bias : std::vector<float>(M * N, 0.f);
              bf16_dot_matmul(dp, level, workers, x.data(), M, K, w.data(), N, y.data(), accumulate, scratch);
              for (int64_t m = 0; m < M; ++m)
                for (int64_t n = 0; n < N; ++n) {
                  const DotReference want =
                      bf16_rounded_x_dot(&x[m * K], &w[n * K], K, accumulate ? bias[m * N + n] : 0);
                  // bf16 x bf16 products are exact in fp32; only the K fp32 additions round
                  // (gamma_K u bound, u = 2^-24), whatever their order.
                  const double bound = (K + 1) * std::ldexp(1.0, -24) * want.magnitude * 1.01 + 1e-30;
                  ASSERT_NEAR(y[m * N + n], want.value, bound) << "M " << M << " K " << K << " N " << N << " threads "
                                                         << threads << (dp ? " vdpbf16ps" : " widening");
                }
            }
        }
}

// A row's result is the same bits alone (the one-row tile: one row of w at a time) as in a batch
// (tiles of 4 rows of w): each sums its k steps in order in one vector, then across its lanes.
TEST(Bf16DotMatmul, OneRowAloneIsTheSameBitsAsInABatch) {
  if (!cpu_has_avx512_bf16()) GTEST_SKIP() << "no AVX512_BF16: the widening kernel's own tests cover this";
  std::vector<BFloat16> scratch;
  for (int64_t K : {576, 1536, 33})
    for (int threads : {1, 2}) {
      WorkerThreads workers(threads);
      const int64_t M = 5, N = 67;
      const std::vector<float> x = random_values(M * K, 7 + K), wf = random_values(N * K, 8);
      std::vector<BFloat16> w(N * K);
      for (int64_t i = 0; i < N * K; ++i) w[i] = to_bf16(wf[i]);
      std::vector<float> batch(M * N), alone(N);
      bf16_dot_matmul(true, best_simd_level(), workers, x.data(), M, K, w.data(), N, batch.data(), false, scratch);
      for (int64_t m = 0; m < M; ++m) {
        bf16_dot_matmul(true, best_simd_level(), workers, &x[m * K], 1, K, w.data(), N, alone.data(), false, scratch);
        for (int64_t n = 0; n < N; ++n) ASSERT_EQ(alone[n], batch[m * N + n]) << "K " << K << " row " << m << " col " << n;
      }
    }
}

// The rounding is what it says: results differ from fp32 activations (the exact kernel) by the
// activations' bf16 rounding, and not at all when x is already bf16-representable.
TEST(Bf16DotMatmul, OnlyTheActivationsRounding) {
  WorkerThreads workers(1);
  const int64_t M = 2, K = 576, N = 8;
  std::vector<float> x = random_values(M * K, 5);
  std::vector<BFloat16> w(N * K);
  const std::vector<float> wf = random_values(N * K, 6);
  for (int64_t i = 0; i < N * K; ++i) w[i] = to_bf16(wf[i]);
  for (float& v : x) v = to_float(to_bf16(v));  // representable: nothing to round
  std::vector<float> exact(M * N), fast(M * N);
  std::vector<BFloat16> scratch;
  few_rows_matmul(best_simd_level(), workers, x.data(), M, K, w.data(), N, exact.data(), false);
  bf16_dot_matmul(cpu_has_avx512_bf16(), best_simd_level(), workers, x.data(), M, K, w.data(), N, fast.data(), false,
                  scratch);
  for (int64_t i = 0; i < M * N; ++i) EXPECT_NEAR(fast[i], exact[i], 1e-4) << i;
}

}  // namespace
}  // namespace lowsync
