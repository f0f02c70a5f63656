// The CPU backend's row-wise operations that a prefill pass splits among the rank's threads (add,
// axpy, scale, RoPE, rmsnorm, SiLU-mul): each against a naive loop, and bit-identical at 1, 2 and 3
// threads, at row counts on both sides of kFewRows (32: up to it one thread does all).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "layers/backend.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::random_values;

constexpr int64_t kCols = 3 * 64;  // three heads of 64 for RoPE
constexpr int kHeadDim = 64;
constexpr float kTheta = 10000.f;

Tensor filled(Backend& be, int64_t rows, const std::vector<float>& values) {
  Tensor t = be.zeros(rows, kCols);
  std::copy(values.begin(), values.end(), be.host_data(t));
  return t;
}
std::vector<float> host(Backend& be, const Tensor& t) {
  std::vector<float> v(t.numel());
  be.to_host(t, v.data());
  return v;
}

// Every op's results on `rows` rows at `threads` threads, concatenated into `all`.
void run_ops(int threads, int64_t rows, std::vector<float>& all) {
  std::unique_ptr<Backend> be = make_cpu_backend(threads);
  const auto a = random_values(rows * kCols, 1), b = random_values(rows * kCols, 2);
  auto keep = [&](const std::vector<float>& v) { all.insert(all.end(), v.begin(), v.end()); };
  std::vector<int32_t> positions(rows);
  for (int64_t t = 0; t < rows; ++t) positions[t] = static_cast<int32_t>(3 * t + 1);

  {  // add: x + y, exact as a float sum
    Tensor x = filled(*be, rows, a), y = filled(*be, rows, b);
    be->add(x, y);
    const auto got = host(*be, x);
    for (int64_t i = 0; i < rows * kCols; ++i) ASSERT_EQ(got[i], a[i] + b[i]) << "add rows=" << rows << " at " << i;
    keep(got);
  }
  for (float alpha : {-1.f, 0.75f}) {  // axpy: x + alpha * y, as a product then a sum in fp32
    Tensor x = filled(*be, rows, a), y = filled(*be, rows, b);
    be->axpy(alpha, y, x);
    const auto got = host(*be, x);
    for (int64_t i = 0; i < rows * kCols; ++i) {
      const float product = alpha * b[i];
      ASSERT_EQ(got[i], a[i] + product) << "axpy " << alpha << " rows=" << rows << " at " << i;
    }
    keep(got);
  }
  {  // scale
    Tensor x = filled(*be, rows, a);
    be->scale(x, 1.5f);
    const auto got = host(*be, x);
    for (int64_t i = 0; i < rows * kCols; ++i) ASSERT_EQ(got[i], a[i] * 1.5f) << "scale rows=" << rows << " at " << i;
    keep(got);
  }
  {  // RoPE on q and k, against the rotation in double (angles as transformers takes them: fp32)
    Tensor q = filled(*be, rows, a), k = filled(*be, rows, b);
    be->rope(q, k, positions, kHeadDim, kTheta);
    const auto got_q = host(*be, q), got_k = host(*be, k);
    for (const auto& [in, got] : {std::make_pair(&a, &got_q), std::make_pair(&b, &got_k)})
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t h = 0; h < kCols / kHeadDim; ++h)
          for (int i = 0; i < kHeadDim / 2; ++i) {
            const float inv_freq = 1.f / std::pow(kTheta, float(2 * i) / float(kHeadDim));
            const double angle = float(positions[t]) * inv_freq;
            const int64_t lo = t * kCols + h * kHeadDim + i, hi = lo + kHeadDim / 2;
            const double x0 = (*in)[lo], x1 = (*in)[hi];
            // fp32 cos / sin (1 ulp of 1) and three roundings: well within 1e-6 of values in [-1, 1)
            ASSERT_NEAR((*got)[lo], x0 * std::cos(angle) - x1 * std::sin(angle), 1e-6) << "rope rows=" << rows;
            ASSERT_NEAR((*got)[hi], x1 * std::cos(angle) + x0 * std::sin(angle), 1e-6) << "rope rows=" << rows;
          }
    keep(got_q);
    keep(got_k);
  }
  {  // rmsnorm and SiLU-mul: checked against transformers by the oracle tests; here the threads only
    Tensor x = filled(*be, rows, a), out = be->zeros(rows, kCols);
    Tensor weight = be->upload_weight(random_values(kCols, 3), 1, kCols);
    be->rmsnorm(x, weight, 1e-5f, out);
    keep(host(*be, out));
    Tensor gate = filled(*be, rows, a), up = filled(*be, rows, b);
    be->silu_mul(gate, up);
    keep(host(*be, gate));
  }
}

TEST(CpuRowOps, MatchNaiveLoopsAndIndependentOfThreads) {
  for (int64_t rows : {1, 32, 33, 100}) {
    std::vector<float> one;
    ASSERT_NO_FATAL_FAILURE(run_ops(1, rows, one));
    for (int threads : {2, 3}) {
      std::vector<float> more;
      ASSERT_NO_FATAL_FAILURE(run_ops(threads, rows, more));
      ASSERT_EQ(more, one) << "rows=" << rows << " threads=" << threads;
    }
  }
}

}  // namespace
}  // namespace lowsync
