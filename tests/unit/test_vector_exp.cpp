// The vector exponentials (layers/vector_exp.h) against double precision: within 2 ulp wherever
// the result is a normal fp32, within one subnormal step below that; softmax's sum and SiLU's
// product on top. On a CPU without AVX-512 this tests the std::exp path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "layers/vector_exp.h"

namespace lowsync {
namespace {

// |got - want| in units of the last place of want (fp32), or in subnormal steps below FLT_MIN.
double ulps(float got, double want) {
  const double ulp = std::abs(want) >= FLT_MIN ? std::ldexp(1.0, std::ilogb(want) - 23) : std::ldexp(1.0, -149);
  return std::abs(double(got) - want) / ulp;
}

TEST(VectorExp, WithinTwoUlpOfDoublePrecision) {
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> any(-110.f, 89.f), near0(-1.f, 1.f);
  std::vector<float> x(100003);  // not a multiple of 16: the masked tail too
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 2 ? any(gen) : near0(gen);
  x[0] = 0.f, x[1] = -std::numeric_limits<float>::infinity(), x[2] = 89.f, x[3] = -104.f, x[4] = 88.7f;
  std::vector<float> e = x;
  const float sum = exp_and_sum(e.data(), static_cast<int64_t>(e.size()), 1.f, 0.f);
  double worst = 0, want_sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp(double(x[i]));
    want_sum += want;
    if (std::isinf(float(want))) {
      EXPECT_TRUE(std::isinf(e[i])) << "exp(" << x[i] << ")";
      continue;
    }
    worst = std::max(worst, ulps(e[i], want));
    ASSERT_LE(ulps(e[i], want), 2.0) << "exp(" << x[i] << ") = " << e[i] << ", expected " << want;
  }
  EXPECT_TRUE(std::isinf(sum));  // x[2] = 89 overflows fp32
  std::printf("worst error %.2f ulp\n", worst);
}

TEST(VectorExp, SoftmaxScaleShiftAndSum) {
  std::mt19937 gen(2);
  std::normal_distribution<float> d(0.f, 3.f);
  for (int64_t n : {1, 15, 16, 17, 513}) {
    std::vector<float> s(n);
    for (float& v : s) v = d(gen);
    const float scale = 0.125f, mx = scale * *std::max_element(s.begin(), s.end());
    std::vector<float> e = s;
    const float sum = exp_and_sum(e.data(), n, scale, mx);
    double want_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double want = std::exp(double(scale) * s[i] - mx);
      want_sum += want;
      ASSERT_LE(ulps(e[i], want), 3.0) << "n=" << n << " i=" << i;  // + the rounding of scale * s - mx
    }
    EXPECT_NEAR(sum, want_sum, 4e-7 * n * want_sum) << "n=" << n;
  }
}

// log-softmax's normaliser over a vocabulary-sized row: each term within 2 ulp, summed in double.
TEST(VectorExp, DoubleSumOfExponentials) {
  std::mt19937 gen(4);
  std::normal_distribution<float> d(0.f, 5.f);
  for (int64_t n : {1, 17, 49152}) {
    std::vector<float> l(n);
    for (float& v : l) v = d(gen);
    const float mx = *std::max_element(l.begin(), l.end());
    double want = 0;
    for (float v : l) want += std::exp(double(v) - mx);
    EXPECT_NEAR(exp_sum_double(l.data(), n, mx), want, 2.4e-7 * want) << "n=" << n;
  }
}

TEST(VectorExp, SiluMul) {
  std::mt19937 gen(3);
  std::normal_distribution<float> d(0.f, 4.f);
  const int64_t n = 1001;
  std::vector<float> g(n), u(n);
  for (int64_t i = 0; i < n; ++i) g[i] = d(gen), u[i] = d(gen);
  g[0] = -120.f, g[1] = 120.f, g[2] = 0.f;
  std::vector<float> out = g;
  silu_mul(out.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    const double want = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    ASSERT_LE(std::abs(out[i] - want), 6e-7 * std::abs(want) + 1e-30) << "silu(" << g[i] << ") * " << u[i];
  }
}

}  // namespace
}  // namespace lowsync
