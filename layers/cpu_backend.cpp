// CPU kernels: fp32, OpenBLAS for every matrix product (projections and attention), plain loops
// for the element-wise parts.
#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "io/error.h"
#include "layers/backend.h"

namespace lowsync {

KVCache Backend::make_kv_cache(int n_layers, int64_t capacity, int64_t kv_dim) {
  KVCache c;
  c.capacity = capacity;
  for (int l = 0; l < n_layers; ++l) {
    c.k.push_back(zeros(capacity, kv_dim));
    c.v.push_back(zeros(capacity, kv_dim));
  }
  return c;
}

namespace {
[[noreturn]] void not_implemented(const Backend& be, const char* kernel) {
  throw UserError(std::string("backend ") + be.name() + " has no " + kernel + " kernel yet; use backend: cpu");
}
}  // namespace

void Backend::rope_scaled(Tensor&, Tensor&, const std::vector<int32_t>&, int, const std::vector<float>&) {
  not_implemented(*this, "scaled RoPE");
}
void Backend::gelu_mul(Tensor&, const Tensor&, bool) { not_implemented(*this, "GeGLU"); }
void Backend::scale(Tensor&, float) { not_implemented(*this, "scale"); }

void Backend::add_bias(Tensor& x, const Tensor& bias) {
  Tensor rows = zeros(x.rows, x.cols);
  embedding(bias, std::vector<int32_t>(x.rows, 0), rows, false);
  add(x, rows);
}

namespace {

// Host memory for a rows x cols fp32 tensor, zero-filled or left as it comes (for a tensor the
// next operation overwrites whole).
Tensor host_tensor(int64_t rows, int64_t cols, bool zero) {
  Tensor t;
  const int64_t n = std::max<int64_t>(rows * cols, 1);
  std::shared_ptr<float[]> mem(zero ? new float[n]() : new float[n]);
  t.storage = std::static_pointer_cast<void>(std::shared_ptr<float>(mem, mem.get()));
  t.ptr = mem.get();
  t.rows = rows;
  t.cols = cols;
  return t;
}

// y = x w^T (accumulate: y += x w^T) for a few rows of x (decode steps), AVX-512: OpenBLAS's sgemm
// streams w at a quarter of memory speed when x has few rows. Here each block of NR rows of w is
// read from memory once and multiplied by every row of x (which stays in cache), MR x NR dot
// products at a time. Each dot product runs over k in the same order whatever M is, so a row's
// result does not depend on the other rows of its batch.

// 16 values of k of every dot product of the tile (fewer at the end: the others read as 0).
template <int MR, int NR>
__attribute__((target("avx512f,fma"), always_inline)) inline void dot_step(const float* x, int64_t K, const float* w,
                                                                          __m512 (&c)[MR][NR], __mmask16 live) {
  __m512 b[NR];
  for (int j = 0; j < NR; ++j) b[j] = _mm512_maskz_loadu_ps(live, w + j * K);
  for (int i = 0; i < MR; ++i) {
    const __m512 a = _mm512_maskz_loadu_ps(live, x + i * K);
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_fmadd_ps(a, b[j], c[i][j]);
  }
}

template <int MR, int NR>
__attribute__((target("avx512f,fma"))) void dot_tile(const float* x, int64_t K, const float* w, float* y,
                                                     int64_t ldy, bool accumulate) {
  __m512 c[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) dot_step<MR, NR>(x + k, K, w + k, c, 0xffff);
  if (k < K) dot_step<MR, NR>(x + k, K, w + k, c, __mmask16((1u << (K - k)) - 1));
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float d = _mm512_reduce_add_ps(c[i][j]);
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;
    }
}

template <int NR>
void dot_weight_rows(const float* x, int64_t M, int64_t K, const float* w, float* y, int64_t N, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) dot_tile<4, NR>(x + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 3) dot_tile<3, NR>(x + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 2) dot_tile<2, NR>(x + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 1) dot_tile<1, NR>(x + m * K, K, w, y + m * N, N, accumulate);
}

constexpr int64_t kFewRows = 32;  // up to here the kernel beats sgemm (measured: 2-4x at M = 2..16)

void few_rows_matmul(const float* x, int64_t M, int64_t K, const float* w, int64_t N, float* y, bool accumulate) {
  int64_t n = 0;
  for (; n + 4 <= N; n += 4) dot_weight_rows<4>(x, M, K, w + n * K, y + n, N, accumulate);
  for (; n < N; ++n) dot_weight_rows<1>(x, M, K, w + n * K, y + n, N, accumulate);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads)
      : few_rows_kernel_(threads == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma")) {
    openblas_set_num_threads(threads);
  }
  std::string name() const override { return "cpu"; }

  Tensor zeros(int64_t rows, int64_t cols) override { return host_tensor(rows, cols, true); }
  Tensor scratch(int64_t rows, int64_t cols) override { return host_tensor(rows, cols, false); }

  Tensor upload_weight(const std::vector<float>& host, int64_t rows, int64_t cols) override {
    Tensor t = host_tensor(rows, cols, false);
    std::memcpy(t.ptr, host.data(), sizeof(float) * rows * cols);
    return t;
  }

  void to_host(const Tensor& t, float* dst) override { std::memcpy(dst, t.ptr, sizeof(float) * t.numel()); }
  void from_host(const float* src, Tensor& t) override { std::memcpy(t.ptr, src, sizeof(float) * t.numel()); }
  float* host_data(Tensor& t) override { return t.f32(); }

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) override {
    for (size_t i = 0; i < ids.size(); ++i) {
      const float* src = table.row(ids[i]);
      float* dst = out.row(i);
      if (accumulate)
        for (int64_t c = 0; c < out.cols; ++c) dst[c] += src[c];
      else
        std::memcpy(dst, src, sizeof(float) * out.cols);
    }
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    const int64_t M = x.rows, N = w.rows, K = w.cols;
    if (bias) {
      for (int64_t i = 0; i < M; ++i) std::memcpy(y.row(i), bias->f32(), sizeof(float) * N);
    }
    if (M <= kFewRows && few_rows_kernel_) {  // decode steps: every weight read once for all rows
      few_rows_matmul(x.f32(), M, K, w.f32(), N, y.f32(), bias != nullptr);
      return;
    }
    if (M == 1) {  // one row (a decode step of one sequence): y = w x streams w at memory speed, sgemm does not
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.f, w.f32(), K, x.f32(), 1, bias ? 1.f : 0.f, y.f32(), 1);
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x.f32(), K, w.f32(), K,
                bias ? 1.f : 0.f, y.f32(), N);
  }

  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    const int64_t n = x.cols;
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* a = x.row(r);
      float* o = out.row(r);
      double ss = 0;
      for (int64_t c = 0; c < n; ++c) ss += double(a[c]) * a[c];
      const float inv = 1.f / std::sqrt(float(ss / n) + eps);
      for (int64_t c = 0; c < n; ++c) o[c] = weight.f32()[c] * (a[c] * inv);
    }
  }

  void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) override {
    const int64_t n = x.cols;
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* a = x.row(r);
      float* o = out.row(r);
      double mean = 0, var = 0;
      for (int64_t c = 0; c < n; ++c) mean += a[c];
      mean /= n;
      for (int64_t c = 0; c < n; ++c) var += (a[c] - mean) * (a[c] - mean);
      const float inv = 1.f / std::sqrt(float(var / n) + eps);
      for (int64_t c = 0; c < n; ++c) o[c] = float(a[c] - mean) * inv * weight.f32()[c] + bias.f32()[c];
    }
  }

  void rope(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim, float theta) override {
    // The same float32 arithmetic as transformers: inv_freq in fp32, then position * inv_freq.
    std::vector<float> inv_freq(head_dim / 2);
    for (int i = 0; i < head_dim / 2; ++i) inv_freq[i] = 1.f / std::pow(theta, float(2 * i) / float(head_dim));
    rope_scaled(q, k, positions, head_dim, inv_freq);
  }

  void rope_scaled(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim,
                   const std::vector<float>& inv_freq) override {
    const int half = head_dim / 2;
    std::vector<float> cos_(half), sin_(half);
    for (size_t t = 0; t < positions.size(); ++t) {
      for (int i = 0; i < half; ++i) {
        const float angle = float(positions[t]) * inv_freq[i];
        cos_[i] = std::cos(angle);
        sin_[i] = std::sin(angle);
      }
      for (Tensor* m : {&q, &k}) {
        float* row = m->row(t);
        for (int64_t h = 0; h < m->cols / head_dim; ++h) {
          float* x = row + h * head_dim;
          for (int i = 0; i < half; ++i) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos_[i] - b * sin_[i];
            x[i + half] = b * cos_[i] + a * sin_[i];
          }
        }
      }
    }
  }

  void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer, const BatchLayout& layout) override {
    const size_t bytes = sizeof(float) * k.cols;
    for (const SequenceSlot& s : layout.seqs)
      for (int64_t i = 0; i < s.n_new; ++i) {
        std::memcpy(cache.k[layer].row(s.cache_base + s.past + i), k.row(s.token_begin + i), bytes);
        std::memcpy(cache.v[layer].row(s.cache_base + s.past + i), v.row(s.token_begin + i), bytes);
      }
  }

  void attention(const Tensor& q, const KVCache& cache, int layer, const BatchLayout& layout,
                 const AttentionHeads& heads, bool causal, Tensor& out) override {
    const int n_heads = heads.n_heads, head_dim = heads.head_dim;
    const Tensor& K = cache.k[layer];
    const Tensor& V = cache.v[layer];
    const float scale = 1.f / std::sqrt(float(head_dim));
    for (const SequenceSlot& s : layout.seqs) {
      const int64_t ctx = s.past + s.n_new;
      scores_.resize(s.n_new * ctx);
      for (int h = 0; h < n_heads; ++h) {
        const int kvh = heads.kv_head(h);
        const float* Qh = q.row(s.token_begin) + h * head_dim;
        const float* Kh = K.row(s.cache_base) + kvh * head_dim;
        const float* Vh = V.row(s.cache_base) + kvh * head_dim;
        // scores = Q K^T * scale  [n_new, ctx]  (one new token, a decode step: scores = K q * scale)
        if (s.n_new == 1)
          cblas_sgemv(CblasRowMajor, CblasNoTrans, ctx, head_dim, scale, Kh, K.cols, Qh, 1, 0.f, scores_.data(), 1);
        else
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n_new, ctx, head_dim, scale, Qh, q.cols, Kh, K.cols,
                      0.f, scores_.data(), ctx);
        // Query i (position past + i) sees keys [first, visible): causal ends at itself, a
        // sliding window starts `window` keys before that end.
        for (int64_t i = 0; i < s.n_new; ++i) {
          float* row = scores_.data() + i * ctx;
          const int64_t visible = causal ? s.past + i + 1 : ctx;
          const int64_t first = heads.window > 0 ? std::max<int64_t>(0, visible - heads.window) : 0;
          const float mx = *std::max_element(row + first, row + visible);
          float sum = 0;
          for (int64_t j = first; j < visible; ++j) sum += (row[j] = std::exp(row[j] - mx));
          const float inv = 1.f / sum;
          for (int64_t j = first; j < visible; ++j) row[j] *= inv;
          std::fill(row, row + first, 0.f);
          std::fill(row + visible, row + ctx, 0.f);
        }
        // out = softmax(scores) V  [n_new, head_dim]  (one new token: out = V^T p)
        float* Oh = out.row(s.token_begin) + h * head_dim;
        if (s.n_new == 1)
          cblas_sgemv(CblasRowMajor, CblasTrans, ctx, head_dim, 1.f, Vh, V.cols, scores_.data(), 1, 0.f, Oh, 1);
        else
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.n_new, head_dim, ctx, 1.f, scores_.data(), ctx, Vh,
                      V.cols, 0.f, Oh, out.cols);
      }
    }
  }

  void gelu(Tensor& x, bool tanh_approximation) override {
    float* a = x.f32();
    const int64_t n = x.numel();
    if (tanh_approximation) {
      const float c = std::sqrt(2.f / float(M_PI));
      for (int64_t i = 0; i < n; ++i) a[i] = 0.5f * a[i] * (1.f + std::tanh(c * (a[i] + 0.044715f * a[i] * a[i] * a[i])));
    } else {
      for (int64_t i = 0; i < n; ++i) a[i] = 0.5f * a[i] * (1.f + std::erf(a[i] / std::sqrt(2.f)));
    }
  }

  void silu_mul(Tensor& gate, const Tensor& up) override {
    float* g = gate.f32();
    const float* u = up.f32();
    for (int64_t i = 0; i < gate.numel(); ++i) g[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }

  void gelu_mul(Tensor& gate, const Tensor& up, bool tanh_approximation) override {
    gelu(gate, tanh_approximation);
    float* g = gate.f32();
    const float* u = up.f32();
    for (int64_t i = 0; i < gate.numel(); ++i) g[i] *= u[i];
  }

  void scale(Tensor& x, float s) override { cblas_sscal(x.numel(), s, x.f32(), 1); }

  bool has_extended_kernels() const override { return true; }

  void add(Tensor& x, const Tensor& y) override { cblas_saxpy(x.numel(), 1.f, y.f32(), 1, x.f32(), 1); }

  void axpy(float alpha, const Tensor& y, Tensor& x) override { cblas_saxpy(x.numel(), alpha, y.f32(), 1, x.f32(), 1); }

  void add_bias(Tensor& x, const Tensor& bias) override {
    for (int64_t r = 0; r < x.rows; ++r) cblas_saxpy(x.cols, 1.f, bias.f32(), 1, x.row(r), 1);
  }

  void gather_rows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& out) override {
    for (size_t i = 0; i < rows.size(); ++i) std::memcpy(out.row(i), x.row(rows[i]), sizeof(float) * x.cols);
  }

 private:
  const bool few_rows_kernel_;  // one thread (the kernel is single-threaded) on a CPU with AVX-512
  std::vector<float> scores_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend>(threads); }

}  // namespace lowsync
