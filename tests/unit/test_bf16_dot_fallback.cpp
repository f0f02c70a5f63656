// weights.bf16_dot on a CPU without AVX512_BF16, forced on this one by LOWSYNC_NO_AVX512_BF16=1
// (layers/bf16_dot_matmul.h): the CPU backend's products with bf16 weights then take the rounded x
// through the widening kernels (few-rows up to 32 rows, many-rows beyond). Through the backend's
// matmul, at 1, 8, 31, 32 (decode-sized), 33 and 100 rows (prefill-sized), K 576 / 1536
// (SmolLM2's) and 33 / 7 (ragged), N odd, 1 and 2 threads, with and without a bias:
//   - every element within the fp32 summation bound of the naive reference on the rounded x
//     (tests/unit/bf16_dot_reference.h), as the vdpbf16ps kernels' tests hold them;
//   - bit-identical to the widening kernel called directly on the rounded x: the fallback ran
//     (vdpbf16ps sums in another order, so on this CPU its results differ in the last bits);
// and a value of the variable other than 0 or 1 is refused naming it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "io/error.h"
#include "layers/backend.h"
#include "layers/bf16_dot_matmul.h"
#include "layers/many_rows_matmul.h"
#include "tests/unit/bf16_dot_reference.h"
#include "tests/unit/random_values.h"

namespace lowsync {
namespace {

using test::bf16_rounded_x_dot;
using test::DotReference;
using test::random_values;

// Sets LOWSYNC_NO_AVX512_BF16 for the test's lifetime, then restores what was there.
class EnvVar {
 public:
  EnvVar(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old, had_ = true;
    setenv(name, value, 1);
  }
  ~EnvVar() {
    if (had_)
      setenv(name_, old_.c_str(), 1);
    else
      unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(Bf16DotFallback, ForcedWideningPathMatchesRoundedXInDouble) {
  const EnvVar off("LOWSYNC_NO_AVX512_BF16", "1");
  ASSERT_FALSE(cpu_has_avx512_bf16());
  for (int threads : {1, 2}) {
    const auto backend = make_cpu_backend(threads, DType::BF16, /*bf16_dot=*/true);
    WorkerThreads workers(threads);
    for (int64_t M : {1, 8, 31, 32, 33, 100})
      for (int64_t K : {576, 1536, 33, 7})
        for (int64_t N : {13, 67}) {
          const std::vector<float> xv = random_values(M * K, 1 + M + 7 * K), wv = random_values(N * K, 2 + N);
          const std::vector<float> bias_v = random_values(N, 3);
          const Tensor w = backend->upload_weight(wv, N, K);  // rounded to bf16 at upload
          ASSERT_EQ(w.dtype, DType::BF16);
          const auto* wb = static_cast<const BFloat16*>(w.ptr);
          const Tensor bias = backend->upload_weight(bias_v, 1, N);
          Tensor x = backend->zeros(M, K);
          std::memcpy(backend->host_data(x), xv.data(), sizeof(float) * M * K);
          std::vector<float> rounded(M * K);
          for (int64_t i = 0; i < M * K; ++i) rounded[i] = to_float(to_bf16(xv[i]));
          for (bool with_bias : {false, true}) {
            Tensor y = backend->zeros(M, N);
            backend->matmul(x, w, with_bias ? &bias : nullptr, y);
            const float* got = backend->host_data(y);
            // The widening kernel the backend falls back to, called directly on the rounded x.
            std::vector<float> want(M * N, 0.f);
            if (with_bias)
              for (int64_t m = 0; m < M; ++m) std::memcpy(&want[m * N], bias_v.data(), sizeof(float) * N);
            const bool many_rows = M > kFewRows;
            if (many_rows && many_rows_matmul_available())
              many_rows_matmul(workers, rounded.data(), M, K, wb, N, want.data(), with_bias);
            else if (!many_rows)
              few_rows_matmul(best_simd_level(), workers, rounded.data(), M, K, wb, N, want.data(), with_bias);
            const std::string where = "M " + std::to_string(M) + " K " + std::to_string(K) + " N " +
                                      std::to_string(N) + " threads " + std::to_string(threads) +
                                      (with_bias ? " +bias" : "");
            for (int64_t m = 0; m < M; ++m)
              for (int64_t n = 0; n < N; ++n) {
                const DotReference ref = bf16_rounded_x_dot(&xv[m * K], &wb[n * K], K, with_bias ? bias_v[n] : 0);
                // bf16 x bf16 products are exact in fp32; only the K fp32 additions round
                // (gamma_K u bound, u = 2^-24), whatever their order.
                const double bound = (K + 1) * std::ldexp(1.0, -24) * ref.magnitude * 1.01 + 1e-30;
                ASSERT_NEAR(got[m * N + n], ref.value, bound) << where;
                if (!many_rows || many_rows_matmul_available())
                  ASSERT_EQ(got[m * N + n], want[m * N + n]) << where << ": not the widening kernel's result";
              }
          }
        }
  }
}

TEST(Bf16DotFallback, OtherValuesOfTheVariableAreRefused) {
  const EnvVar bad("LOWSYNC_NO_AVX512_BF16", "yes");
  try {
    cpu_has_avx512_bf16();
    FAIL() << "LOWSYNC_NO_AVX512_BF16=yes accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("LOWSYNC_NO_AVX512_BF16"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected 0 or 1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lowsync
