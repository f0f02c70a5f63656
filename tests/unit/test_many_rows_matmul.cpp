// The many-rows matmul (layers/many_rows_matmul.h) against a naive double-precision loop, at the
// edges of its tiling: rows around its 14-row tile (1, 13, 14, 15, 33, 100), columns around its
// 32-column panel (1, 31, 32, 33, 67), k around its 576-value block (1, 17, 576, 577, 1200), 1-3
// threads; fp32, bf16, fp16 and q8_0 weights; and the strided attention products. Skipped where the
// CPU has no AVX-512 (the backend then uses OpenBLAS).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "layers/many_rows_matmul.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::keep;
using test::narrowed;
using test::random_values;

// The error bound of any fp32 summation order of K products (Higham, eq. 3.5): each result within
// gamma_{K+1} * (|y0| + sum_k |x_mk b_kn|); b(k, n) gives the right-hand matrix's element.
template <typename B>
void expect_close(const std::vector<float>& x, int64_t ldx, int64_t M, int64_t K, B b, int64_t N,
                  const std::vector<float>& y, int64_t ldy, const std::vector<float>& y0, const std::string& what) {
  const double u = std::ldexp(1.0, -24), gamma = (K + 1) * u / (1 - (K + 1) * u);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double d = y0.empty() ? 0 : y0[m * ldy + n], a = std::abs(d);
      for (int64_t k = 0; k < K; ++k) {
        d += double(x[m * ldx + k]) * b(k, n);
        a += std::abs(double(x[m * ldx + k]) * b(k, n));
      }
      ASSERT_LE(std::abs(y[m * ldy + n] - d), gamma * a + std::numeric_limits<float>::denorm_min())
          << what << " M=" << M << " N=" << N << " K=" << K << " at (" << m << ", " << n << ")";
    }
}


template <typename W>
void check_weights(W (*to)(float), const char* type) {
  for (int64_t M : {1, 13, 14, 15, 33, 100})
    for (int64_t N : {1, 31, 32, 33, 67})
      for (int64_t K : {1, 17, 576, 577, 1200}) {
        const auto x = random_values(M * K, 1 + M);
        const std::vector<W> w = narrowed(random_values(N * K, 2 + N), to);
        const auto bias = random_values(M * N, 3);
        std::vector<float> at_one_thread;
        for (int threads : {1, 2, 3})
          for (bool accumulate : {false, true}) {
            WorkerThreads workers(threads);
            std::vector<float> y = accumulate ? bias : std::vector<float>(M * N, std::nanf(""));
            many_rows_matmul(workers, x.data(), M, K, w.data(), N, y.data(), accumulate);
            expect_close(x, K, M, K, [&](int64_t k, int64_t n) { return double(to_float(w[n * K + k])); }, N, y, N,
                         accumulate ? bias : std::vector<float>{},
                         std::string(type) + " threads=" + std::to_string(threads) + (accumulate ? " +bias" : ""));
            if (::testing::Test::HasFatalFailure()) return;
            // Threads split columns, never a dot product: the same bits at any thread count.
            if (accumulate) continue;
            if (threads == 1)
              at_one_thread = y;
            else
              ASSERT_EQ(y, at_one_thread) << type << " M=" << M << " N=" << N << " K=" << K << " threads=" << threads;
          }
      }
}

class ManyRowsMatmul : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!many_rows_matmul_available()) GTEST_SKIP() << "no AVX-512 on this CPU: the backend uses OpenBLAS";
  }
};

TEST_F(ManyRowsMatmul, Fp32WeightsMatchNaiveLoop) { check_weights(keep, "fp32"); }
TEST_F(ManyRowsMatmul, Bf16WeightsMatchNaiveLoop) { check_weights(to_bf16, "bf16"); }
TEST_F(ManyRowsMatmul, Fp16WeightsMatchNaiveLoop) { check_weights(to_half, "fp16"); }

TEST_F(ManyRowsMatmul, Q8_0WeightsMatchNaiveLoop) {
  for (int64_t M : {1, 14, 33})
    for (int64_t N : {1, 33, 67})
      for (int64_t K : {32, 256, 288, 608}) {
        const auto x = random_values(M * K, 1 + M), wf = random_values(N * K, 2 + N);
        std::vector<BlockQ8_0> w(N * K / kQ8_0Block);
        for (size_t b = 0; b < w.size(); ++b) w[b] = quantize_q8_0(wf.data() + b * kQ8_0Block);
        WorkerThreads workers(2);
        std::vector<float> y(M * N, std::nanf(""));
        many_rows_matmul(workers, x.data(), M, K, w.data(), N, y.data(), false);
        expect_close(x, K, M, K, [&](int64_t k, int64_t n) { return double(Q8_0Ptr{w.data()}[n * K + k]); }, N, y, N,
                     {}, "q8_0");
        if (::testing::Test::HasFatalFailure()) return;
      }
}

// A row's result does not depend on which other rows share the product (nor on its tile).
TEST_F(ManyRowsMatmul, RowResultIndependentOfBatch) {
  const int64_t M = 40, N = 45, K = 300;
  const auto x = random_values(M * K, 8), w = random_values(N * K, 9);
  WorkerThreads single(1);
  std::vector<float> all(M * N), part(M * N);
  many_rows_matmul(single, x.data(), M, K, w.data(), N, all.data(), false);
  for (int64_t m0 : {0, 5, 17})
    for (int64_t rows : {1, 14, 23}) {
      if (m0 + rows > M) continue;
      many_rows_matmul(single, x.data() + m0 * K, rows, K, w.data(), N, part.data(), false);
      for (int64_t i = 0; i < rows * N; ++i) ASSERT_EQ(part[i], all[m0 * N + i]) << "rows " << m0 << "+" << rows;
    }
}

// Attention's strided products: q k^T and p v on heads inside wider rows.
TEST_F(ManyRowsMatmul, StridedProductsMatchNaiveLoop) {
  for (int64_t M : {1, 15, 64})
    for (int64_t ctx : {1, 33, 300})
      for (int64_t head_dim : {32, 64, 80}) {
        const int64_t ldq = 3 * head_dim + 5, ldk = 2 * head_dim + 3, lds = ctx + 7, ldo = 3 * head_dim;
        const auto q = random_values(M * ldq, 4), k = random_values(ctx * ldk, 5), p = random_values(M * lds, 6);
        std::vector<float> s(M * lds, std::nanf("")), o(M * ldo, std::nanf(""));
        matmul_nt(q.data() + head_dim, ldq, M, head_dim, k.data() + 1, ldk, ctx, s.data(), lds);
        std::vector<float> q_head(q.begin() + head_dim, q.end());
        expect_close(q_head, ldq, M, head_dim, [&](int64_t kk, int64_t n) { return double(k[1 + n * ldk + kk]); }, ctx,
                     s, lds, {}, "q k^T");
        matmul_nn(p.data(), lds, M, ctx, k.data() + 1, ldk, head_dim, o.data() + head_dim, ldo);
        std::vector<float> o_head(o.begin() + head_dim, o.end());
        expect_close(p, lds, M, ctx, [&](int64_t kk, int64_t n) { return double(k[1 + kk * ldk + n]); }, head_dim,
                     o_head, ldo, {}, "p v");
        if (::testing::Test::HasFatalFailure()) return;
      }
}

}  // namespace
}  // namespace lowsync
