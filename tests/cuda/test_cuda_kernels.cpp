// Every kernel of the CUDA backend against the CPU backend on random inputs, through the Backend
// interface the model uses. Tolerances, as max |gpu - cpu| / max(1, |cpu|) over the elements:
//   fp32 weights: 1e-4 everywhere (pedantic fp32 GEMM, fp32 kernels).
//   bf16 / fp16 weights: matrix products within 2e-2 of max |cpu| (the activation is rounded to
//   the weight type, 8 or 11 mantissa bits, before an fp32-accumulated product); embedding rows
//   within the rounding of one table value to bf16 (4 x 2^-8) or fp16 (4 x 2^-11).
// Without a GPU every kernel test skips with "no GPU: ..."; the device-selection test runs anyway.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "io/error.h"
#include "layers/backend.h"
#include "layers/cuda_backend.h"

using namespace lowsync;

namespace lowsync {
// Readable parameter values in test names (ctest lists them).
void PrintTo(DType d, std::ostream* os) { *os << (d == DType::F32 ? "fp32" : d == DType::F16 ? "fp16" : "bf16"); }
}  // namespace lowsync

namespace {

// Why no GPU can be used here, or empty when one can.
std::string no_gpu_reason() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  }
  return n == 0 ? "cudaGetDeviceCount found 0 devices" : "";
}

std::vector<float> random_values(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor put(Backend& be, const std::vector<float>& v, int64_t rows, int64_t cols) {
  Tensor t = be.zeros(rows, cols);
  be.from_host(v.data(), t);
  return t;
}

std::vector<float> get(Backend& be, const Tensor& t) {
  std::vector<float> v(t.numel());
  be.to_host(t, v.data());
  return v;
}

// max |got - ref| / max(1, |ref|)
double max_rel_error(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i)
    worst = std::max(worst, std::abs(double(got[i]) - ref[i]) / std::max(1.0, std::abs(double(ref[i]))));
  return worst;
}

// max |got - ref| / max |ref|
double max_error_of_scale(const std::vector<float>& got, const std::vector<float>& ref) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < ref.size(); ++i) {
    worst = std::max(worst, std::abs(double(got[i]) - ref[i]));
    scale = std::max(scale, std::abs(double(ref[i])));
  }
  return worst / scale;
}

constexpr double kF32Tol = 1e-4;
constexpr double kNarrowGemmTol = 2e-2;

const char* dtype_name(DType d) { return d == DType::F32 ? "fp32" : d == DType::F16 ? "fp16" : "bf16"; }

// A CPU backend and a CUDA backend whose matrices are stored in GetParam().
class CudaVsCpu : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    const std::string why = no_gpu_reason();
    if (!why.empty()) GTEST_SKIP() << "no GPU: " << why;
    cpu = make_cpu_backend(1);
    gpu = make_cuda_backend(-1, GetParam());
  }
  bool exact() const { return GetParam() == DType::F32; }

  // The same weight on both backends.
  std::pair<Tensor, Tensor> weight(const std::vector<float>& v, int64_t rows, int64_t cols) {
    return {cpu->upload_weight(v, rows, cols), gpu->upload_weight(v, rows, cols)};
  }
  std::pair<Tensor, Tensor> activation(const std::vector<float>& v, int64_t rows, int64_t cols) {
    return {put(*cpu, v, rows, cols), put(*gpu, v, rows, cols)};
  }
  void expect_same(const Tensor& c, const Tensor& g, double tol, const std::string& what) {
    const double err = max_rel_error(get(*gpu, g), get(*cpu, c));
    EXPECT_LE(err, tol) << what << " (" << dtype_name(GetParam()) << ")";
  }

  std::unique_ptr<Backend> cpu, gpu;
};

TEST_P(CudaVsCpu, MemoryRoundTrip) {
  const auto v = random_values(7 * 13, 1);
  Tensor g = put(*gpu, v, 7, 13);
  EXPECT_EQ(get(*gpu, g), v);
  EXPECT_EQ(get(*gpu, gpu->zeros(5, 3)), std::vector<float>(15, 0.f));
  float* staged = gpu->host_staging(1000);
  ASSERT_NE(staged, nullptr);
  gpu->to_host(g, staged);
  EXPECT_TRUE(std::equal(v.begin(), v.end(), staged));
  // Vectors (biases, norm weights) are kept in fp32 whatever the weight dtype.
  Tensor bias = gpu->upload_weight(v, 1, 91);
  EXPECT_EQ(bias.dtype, DType::F32);
  EXPECT_EQ(get(*gpu, bias), v);
}

TEST_P(CudaVsCpu, Embedding) {
  const int64_t V = 50, H = 24;
  const auto table = random_values(V * H, 2);
  auto [tc, tg] = weight(table, V, H);
  const std::vector<int32_t> ids = {3, 0, 49, 3, 17, 17, 8};
  const auto init = random_values(ids.size() * H, 3);
  for (bool accumulate : {false, true}) {
    auto [oc, og] = activation(init, static_cast<int64_t>(ids.size()), H);
    cpu->embedding(tc, ids, oc, accumulate);
    gpu->embedding(tg, ids, og, accumulate);
    // The rounding of one table value (|value| < 4) to the weight type.
    const double tol = GetParam() == DType::F32 ? 0.0 : GetParam() == DType::F16 ? 4.0 / 2048 : 4.0 / 256;
    expect_same(oc, og, tol, accumulate ? "embedding (accumulate)" : "embedding");
  }
  Tensor out = gpu->zeros(1, H);
  EXPECT_THROW(gpu->embedding(tg, {int32_t(V)}, out, false), std::runtime_error);
}

TEST_P(CudaVsCpu, MatmulWithAndWithoutBias) {
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{37, 53, 96}, {1, 200, 64}, {128, 64, 160}}) {
    const auto x = random_values(M * K, 4);
    const auto w = random_values(N * K, 5, 0.2f);
    const auto b = random_values(N, 6);
    auto [xc, xg] = activation(x, M, K);
    auto [wc, wg] = weight(w, N, K);
    auto [bc, bg] = weight(b, 1, N);
    for (bool with_bias : {false, true}) {
      Tensor yc = cpu->zeros(M, N), yg = gpu->zeros(M, N);
      cpu->matmul(xc, wc, with_bias ? &bc : nullptr, yc);
      gpu->matmul(xg, wg, with_bias ? &bg : nullptr, yg);
      const std::string what = "matmul " + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                               (with_bias ? " + bias" : "");
      if (exact())
        expect_same(yc, yg, kF32Tol, what);
      else
        EXPECT_LE(max_error_of_scale(get(*gpu, yg), get(*cpu, yc)), kNarrowGemmTol) << what << " " << dtype_name(GetParam());
    }
  }
}

TEST_P(CudaVsCpu, Norms) {
  const int64_t T = 9, H = 300;  // H not a multiple of the block size
  const auto x = random_values(T * H, 7, 3.f);
  const auto w = random_values(H, 8), b = random_values(H, 9);
  auto [wc, wg] = weight(w, 1, H);
  auto [bc, bg] = weight(b, 1, H);
  {
    auto [xc, xg] = activation(x, T, H);
    Tensor oc = cpu->zeros(T, H), og = gpu->zeros(T, H);
    cpu->rmsnorm(xc, wc, 1e-6f, oc);
    gpu->rmsnorm(xg, wg, 1e-6f, og);
    expect_same(oc, og, kF32Tol, "rmsnorm");
    cpu->layernorm(xc, wc, bc, 1e-5f, oc);
    gpu->layernorm(xg, wg, bg, 1e-5f, og);
    expect_same(oc, og, kF32Tol, "layernorm");
  }
  {  // in place, as the model calls them
    auto [xc, xg] = activation(x, T, H);
    cpu->layernorm(xc, wc, bc, 1e-5f, xc);
    gpu->layernorm(xg, wg, bg, 1e-5f, xg);
    expect_same(xc, xg, kF32Tol, "layernorm in place");
    cpu->rmsnorm(xc, wc, 1e-6f, xc);
    gpu->rmsnorm(xg, wg, 1e-6f, xg);
    expect_same(xc, xg, kF32Tol, "rmsnorm in place");
  }
}

TEST_P(CudaVsCpu, Rope) {
  const int head_dim = 32;
  const std::vector<int32_t> positions = {0, 1, 2, 3, 0, 1, 57, 58, 120};  // three packed sequences
  const int64_t T = static_cast<int64_t>(positions.size());
  auto [qc, qg] = activation(random_values(T * 4 * head_dim, 10), T, 4 * head_dim);
  auto [kc, kg] = activation(random_values(T * 2 * head_dim, 11), T, 2 * head_dim);
  cpu->rope(qc, kc, positions, head_dim, 10000.f);
  gpu->rope(qg, kg, positions, head_dim, 10000.f);
  expect_same(qc, qg, kF32Tol, "rope q");
  expect_same(kc, kg, kF32Tol, "rope k");
}

// A packed, ragged batch through store_kv + attention: prefill of every sequence, then one decode
// step each. Sequences sit at scattered cache bases; one is longer than the kernel's key chunk.
struct AttentionCase {
  const char* name;
  int n_heads, n_kv_heads, head_dim;
  bool causal;
  std::vector<int64_t> lengths;
  int group = 0;     // query heads per kv head; 0: n_heads / n_kv_heads
  int q_offset = 0;  // a tensor-parallel share that starts part-way into a kv group
};

void PrintTo(const AttentionCase& c, std::ostream* os) { *os << c.name; }

class CudaAttention : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    const std::string why = no_gpu_reason();
    if (!why.empty()) GTEST_SKIP() << "no GPU: " << why;
    cpu = make_cpu_backend(1);
    gpu = make_cuda_backend(-1, DType::F32);
  }
  std::unique_ptr<Backend> cpu, gpu;
};

TEST_P(CudaAttention, PrefillThenDecodeMatchCpu) {
  const AttentionCase& c = GetParam();
  const int64_t q_dim = int64_t(c.n_heads) * c.head_dim, kv_dim = int64_t(c.n_kv_heads) * c.head_dim;
  std::vector<int64_t> base;
  int64_t capacity = 3;  // a gap before the first sequence
  for (int64_t n : c.lengths) {
    base.push_back(capacity);
    capacity += n + 1 + 2;  // prompt, one decoded token, a gap
  }
  KVCache cc = cpu->make_kv_cache(1, capacity, kv_dim), cg = gpu->make_kv_cache(1, capacity, kv_dim);
  uint32_t seed = 20;
  auto step = [&](const BatchLayout& layout, const std::string& what) {
    const int64_t T = layout.tokens();
    const auto q = random_values(T * q_dim, seed++), k = random_values(T * kv_dim, seed++),
               v = random_values(T * kv_dim, seed++);
    Tensor qc = put(*cpu, q, T, q_dim), kc = put(*cpu, k, T, kv_dim), vc = put(*cpu, v, T, kv_dim);
    Tensor qg = put(*gpu, q, T, q_dim), kg = put(*gpu, k, T, kv_dim), vg = put(*gpu, v, T, kv_dim);
    cpu->store_kv(kc, vc, cc, 0, layout);
    gpu->store_kv(kg, vg, cg, 0, layout);
    EXPECT_EQ(get(*gpu, cg.k[0]), get(*cpu, cc.k[0])) << what << ": k cache";
    EXPECT_EQ(get(*gpu, cg.v[0]), get(*cpu, cc.v[0])) << what << ": v cache";
    Tensor oc = cpu->zeros(T, q_dim), og = gpu->zeros(T, q_dim);
    const AttentionHeads heads{c.n_heads, c.n_kv_heads, c.head_dim, c.group ? c.group : c.n_heads / c.n_kv_heads,
                               c.q_offset};
    cpu->attention(qc, cc, 0, layout, heads, c.causal, oc);
    gpu->attention(qg, cg, 0, layout, heads, c.causal, og);
    EXPECT_LE(max_rel_error(get(*gpu, og), get(*cpu, oc)), kF32Tol) << what;
  };
  BatchLayout prefill;
  for (size_t s = 0; s < c.lengths.size(); ++s) prefill.add(c.lengths[s], 0, base[s]);
  step(prefill, "prefill");
  BatchLayout decode;
  for (size_t s = 0; s < c.lengths.size(); ++s) decode.add(1, c.lengths[s], base[s]);
  step(decode, "decode");
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Values(AttentionCase{"multi_head", 4, 4, 16, true, {5, 1, 9}},
                                           AttentionCase{"grouped_query", 8, 2, 16, true, {5, 1, 9}},
                                           AttentionCase{"encoder", 4, 4, 64, false, {7, 3}},
                                           AttentionCase{"beyond_one_key_chunk", 4, 1, 128, true, {300, 2}},
                                           AttentionCase{"largest_head", 2, 2, 256, true, {600}},
                                           AttentionCase{"share_inside_a_kv_group", 5, 2, 16, true, {5, 9}, 3, 1}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(CudaVsCpu, Activations) {
  const int64_t T = 11, F = 70;
  const auto x = random_values(T * F, 30, 2.f), y = random_values(T * F, 31, 2.f);
  for (bool tanh_approx : {false, true}) {
    auto [xc, xg] = activation(x, T, F);
    cpu->gelu(xc, tanh_approx);
    gpu->gelu(xg, tanh_approx);
    expect_same(xc, xg, kF32Tol, tanh_approx ? "gelu (tanh)" : "gelu (erf)");
  }
  auto [gc, gg] = activation(x, T, F);
  auto [uc, ug] = activation(y, T, F);
  cpu->silu_mul(gc, uc);
  gpu->silu_mul(gg, ug);
  expect_same(gc, gg, kF32Tol, "silu_mul");
}

TEST_P(CudaVsCpu, ResidualsBiasAndGather) {
  const int64_t T = 13, H = 40;
  auto [xc, xg] = activation(random_values(T * H, 40), T, H);
  auto [yc, yg] = activation(random_values(T * H, 41), T, H);
  auto [bc, bg] = weight(random_values(H, 42), 1, H);
  cpu->add(xc, yc);
  gpu->add(xg, yg);
  expect_same(xc, xg, kF32Tol, "add");
  cpu->axpy(-0.75f, yc, xc);
  gpu->axpy(-0.75f, yg, xg);
  expect_same(xc, xg, kF32Tol, "axpy");
  cpu->add_bias(xc, bc);
  gpu->add_bias(xg, bg);
  expect_same(xc, xg, kF32Tol, "add_bias");
  const std::vector<int64_t> rows = {12, 0, 5, 5};
  Tensor oc = cpu->zeros(4, H), og = gpu->zeros(4, H);
  cpu->gather_rows(xc, rows, oc);
  gpu->gather_rows(xg, rows, og);
  expect_same(oc, og, 0.0, "gather_rows");
  EXPECT_THROW(gpu->gather_rows(xg, {T}, og), std::runtime_error);
}

INSTANTIATE_TEST_SUITE_P(WeightTypes, CudaVsCpu, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Runs with or without a GPU: asking for a device that is not there is one clear UserError.
TEST(CudaDevice, MissingDeviceIsAClearError) {
  const bool none = !no_gpu_reason().empty();
  try {
    make_cuda_backend(none ? -1 : 999, DType::BF16, 3, 0);
    FAIL() << "no error";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("backend: cuda: "), std::string::npos) << msg;
    EXPECT_NE(msg.find(none ? "no CUDA device is visible on rank 3" : "sees only"), std::string::npos) << msg;
  }
}

}  // namespace
