// CPU kernels: fp32. Matrix products: lowsync's few-rows kernel (layers/few_rows_matmul.h) for
// projections of up to 32 rows (decode steps); with AVX-512, lowsync's many-rows kernel
// (layers/many_rows_matmul.h) for larger ones and for a prompt's attention, whose heads and blocks
// of queries the rank's threads share; without it OpenBLAS. Element-wise parts are plain loops,
// their exponentials a vector at a time (layers/vector_exp.h). `threads` is OpenBLAS's thread
// count and the size of the rank's own worker threads.
// Weight matrices may be stored in bf16, fp16 or q8_0 (`weights.dtype`): products widen them to
// fp32 in registers (few-rows kernel) or while packing them (many-rows kernel); without AVX-512,
// larger products widen a panel of rows at a time for sgemm; embedding lookups widen the rows they
// copy. Products multiply and sum in fp32, except products with bf16 weights under
// `weights.bf16_dot`, which round x to bf16 (decode-sized: bf16_dot_matmul.h; larger:
// many_rows_bf16_dot.h), and decode products with q8_0 weights under `weights.q8_dot`, which
// quantise x to q8_0 (q8_dot_matmul.h). Weight matrices live on huge
// pages where the kernel grants them (layers/weight_memory.h): decode streams them. Activations
// live on 64-byte aligned memory that the process keeps once freed (layers/activation_memory.h):
// a pass asks for the same sizes every layer, which would otherwise be new pages each time.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "io/error.h"
#include "layers/activation_memory.h"
#include "layers/backend.h"
#include "layers/bf16_dot_matmul.h"
#include "layers/few_rows_matmul.h"
#include "layers/many_rows_bf16_dot.h"
#include "layers/many_rows_matmul.h"
#include "layers/q8_dot_matmul.h"
#include "layers/vector_exp.h"
#include "layers/weight_memory.h"

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
// next operation overwrites whole): aligned, and reused once freed (layers/activation_memory.h).
Tensor host_tensor(int64_t rows, int64_t cols, bool zero) {
  Tensor t;
  std::shared_ptr<float> mem = activation_memory(rows * cols, zero);
  t.ptr = mem.get();
  t.storage = std::move(mem);
  t.rows = rows;
  t.cols = cols;
  return t;
}

// A decode pass's attention products (one query row over a few hundred cached keys, per head) run
// on one OpenBLAS thread: OpenBLAS would split those of over ~150 keys over `threads`, and its
// woken worker then busy-waits for more work on a core that the few-rows kernel's next product
// needs (measured with OpenMP threads, which also busy-wait: decode steps 5x slower at 2 threads
// on 2 cores). Products this small gain nothing from a second thread.
class OneBlasThreadWhileDecoding {
 public:
  OneBlasThreadWhileDecoding(const BatchLayout& layout, int threads) : threads_(threads) {
    decoding_ = threads > 1 && std::all_of(layout.seqs.begin(), layout.seqs.end(),
                                           [](const SequenceSlot& s) { return s.n_new == 1; });
    if (decoding_) openblas_set_num_threads(1);
  }
  ~OneBlasThreadWhileDecoding() {
    if (decoding_) openblas_set_num_threads(threads_);
  }

 private:
  const int threads_;
  bool decoding_ = false;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, DType weights, bool bf16_dot, bool q8_dot)
      : threads_(threads), weights_(weights), bf16_dot_(bf16_dot), dpbf16_(cpu_has_avx512_bf16()), q8_dot_(q8_dot),
        q8_level_(best_q8_dot_level()), simd_(best_simd_level()), many_rows_(many_rows_matmul_available()),
        workers_(threads) {
    openblas_set_num_threads(threads);
  }
  std::string name() const override { return "cpu"; }
  DType weight_dtype() const override { return weights_; }

  Tensor zeros(int64_t rows, int64_t cols) override { return host_tensor(rows, cols, true); }
  Tensor scratch(int64_t rows, int64_t cols) override { return host_tensor(rows, cols, false); }

  // Matrices in the weight dtype, rounded to nearest; vectors (norm weights, biases) in fp32.
  Tensor upload_weight(const std::vector<float>& host, int64_t rows, int64_t cols) override {
    if (rows == 1) {
      Tensor t = host_tensor(rows, cols, false);
      std::memcpy(t.ptr, host.data(), sizeof(float) * rows * cols);
      return t;
    }
    if (weights_ == DType::F32) {
      Tensor t = weight_tensor(rows, cols, DType::F32);
      std::memcpy(t.ptr, host.data(), sizeof(float) * rows * cols);
      return t;
    }
    if (weights_ == DType::BF16) return narrow_tensor<BFloat16>(host, rows, cols, to_bf16);
    if (weights_ == DType::Q8_0) {
      if (cols % kQ8_0Block != 0)  // the loader names the tensor first; this guards other callers (profiler)
        throw UserError("weights.dtype q8_0: a weight matrix has rows of " + std::to_string(cols) +
                        " values, not whole 32-value blocks");
      return q8_0_tensor(host, rows, cols);
    }
    return narrow_tensor<Half>(host, rows, cols, to_half);
  }

  void to_host(const Tensor& t, float* dst) override { std::memcpy(dst, t.ptr, sizeof(float) * t.numel()); }
  void from_host(const float* src, Tensor& t) override { std::memcpy(t.ptr, src, sizeof(float) * t.numel()); }
  float* host_data(Tensor& t) override { return t.f32(); }

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) override {
    if (table.dtype != DType::F32) return narrow_embedding(table, ids, out, accumulate);
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
    if (M > kFewRows && bf16_dot_ && w.dtype == DType::BF16) return bf16_dot_many_rows(x, w, bias != nullptr, y);
    if (M > kFewRows && many_rows_) return many_rows(x, w, bias != nullptr, y);
    if (w.dtype == DType::BF16) return narrow_matmul(x, static_cast<const BFloat16*>(w.ptr), N, K, bias != nullptr, y);
    if (w.dtype == DType::F16) return narrow_matmul(x, static_cast<const Half*>(w.ptr), N, K, bias != nullptr, y);
    if (w.dtype == DType::Q8_0) return narrow_matmul(x, q8_0_of(w), N, K, bias != nullptr, y);
    if (M <= kFewRows && simd_ != SimdLevel::Scalar) {  // decode steps: every weight read once for all rows
      few_rows_matmul(simd_, workers_, x.f32(), M, K, w.f32(), N, y.f32(), bias != nullptr);
      return;
    }
    if (M == 1) {  // one row, no SIMD kernel: y = w x streams w at memory speed, sgemm does not
      cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, 1.f, w.f32(), K, x.f32(), 1, bias ? 1.f : 0.f, y.f32(), 1);
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.f, x.f32(), K, w.f32(), K,
                bias ? 1.f : 0.f, y.f32(), N);
  }

  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    const int64_t n = x.cols;
    on_row_slices(x.rows, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* a = x.row(r);
        float* o = out.row(r);
        double ss = 0;
        for (int64_t c = 0; c < n; ++c) ss += double(a[c]) * a[c];
        const float inv = 1.f / std::sqrt(float(ss / n) + eps);
        for (int64_t c = 0; c < n; ++c) o[c] = weight.f32()[c] * (a[c] * inv);
      }
    });
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
    const int64_t tokens = static_cast<int64_t>(positions.size());
    // cos and sin of every (token, frequency) angle [tokens, half]: every layer of a pass asks for
    // the same ones, so they are computed by its first layer only. Tokens split among the threads.
    if (positions != rope_positions_ || inv_freq != rope_inv_freq_) {
      rope_positions_ = positions;
      rope_inv_freq_ = inv_freq;
      rope_cos_.resize(tokens * half);
      rope_sin_.resize(tokens * half);
      on_row_slices(tokens, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          for (int i = 0; i < half; ++i) {
            const float angle = float(positions[t]) * inv_freq[i];
            rope_cos_[t * half + i] = std::cos(angle);
            rope_sin_[t * half + i] = std::sin(angle);
          }
      });
    }
    on_row_slices(tokens, [&](int64_t t0, int64_t t1) { rotate_rows(q, k, t0, t1, head_dim); });
  }

  void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer, const BatchLayout& layout) override {
    const size_t bytes = sizeof(float) * k.cols;
    for (const SequenceSlot& s : layout.seqs)
      on_row_slices(s.n_new, [&](int64_t i0, int64_t i1) {  // a prompt's rows split among the threads
        for (int64_t i = i0; i < i1; ++i) {
          std::memcpy(cache.k[layer].row(s.cache_base + s.past + i), k.row(s.token_begin + i), bytes);
          std::memcpy(cache.v[layer].row(s.cache_base + s.past + i), v.row(s.token_begin + i), bytes);
        }
      });
  }

  void attention(const Tensor& q, const KVCache& cache, int layer, const BatchLayout& layout,
                 const AttentionHeads& heads, bool causal, Tensor& out) override {
    const int n_heads = heads.n_heads, head_dim = heads.head_dim;
    const Tensor& K = cache.k[layer];
    const Tensor& V = cache.v[layer];
    const float scale = 1.f / std::sqrt(float(head_dim));
    OneBlasThreadWhileDecoding one_thread(layout, threads_);
    for (const SequenceSlot& s : layout.seqs) {
      if (s.n_new > 1 && many_rows_) {
        prompt_attention(q, K, V, s, heads, causal, out);
        continue;
      }
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
          const float inv = 1.f / exp_and_sum(row + first, visible - first, 1.f, mx);
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
    on_row_slices(gate.rows, [&](int64_t r0, int64_t r1) {
      lowsync::silu_mul(gate.row(r0), up.row(r0), (r1 - r0) * gate.cols);
    });
  }

  void gelu_mul(Tensor& gate, const Tensor& up, bool tanh_approximation) override {
    gelu(gate, tanh_approximation);
    float* g = gate.f32();
    const float* u = up.f32();
    for (int64_t i = 0; i < gate.numel(); ++i) g[i] *= u[i];
  }

  // The element-wise ops below are plain loops split by rows, not OpenBLAS's sscal / saxpy: on a
  // prefill pass OpenBLAS runs those on its own threads (over 10000 elements), whose worker then
  // spins for a while on the core the next product's worker needs (measured: over six 512-token
  // SmolLM2 prefill passes at 2 threads, OpenBLAS's thread burnt 0.45-2.1 s of CPU time, beside
  // ~0.65 s of CPU per pass for the whole pass at 1 thread).
  void scale(Tensor& x, float s) override {
    on_row_slices(x.rows, [&](int64_t r0, int64_t r1) {
      float* a = x.row(r0);
      for (int64_t i = 0; i < (r1 - r0) * x.cols; ++i) a[i] *= s;
    });
  }

  bool has_extended_kernels() const override { return true; }

  void add(Tensor& x, const Tensor& y) override {
    on_row_slices(x.rows, [&](int64_t r0, int64_t r1) {
      float* a = x.row(r0);
      const float* b = y.row(r0);
      for (int64_t i = 0; i < (r1 - r0) * x.cols; ++i) a[i] += b[i];
    });
  }

  // x + alpha * y rounded twice (no fused multiply-add in this build's baseline); the same as a
  // fused one for alpha = +-1, the only one the model uses (decoupled segments' x_r - x).
  void axpy(float alpha, const Tensor& y, Tensor& x) override {
    on_row_slices(x.rows, [&](int64_t r0, int64_t r1) {
      float* a = x.row(r0);
      const float* b = y.row(r0);
      for (int64_t i = 0; i < (r1 - r0) * x.cols; ++i) a[i] += alpha * b[i];
    });
  }

  void add_bias(Tensor& x, const Tensor& bias) override {
    for (int64_t r = 0; r < x.rows; ++r) cblas_saxpy(x.cols, 1.f, bias.f32(), 1, x.row(r), 1);
  }

  void gather_rows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& out) override {
    for (size_t i = 0; i < rows.size(); ++i) std::memcpy(out.row(i), x.row(rows[i]), sizeof(float) * x.cols);
  }

 private:
  // f(r0, r1) for row slices [r0, r1) covering [0, rows): a prefill pass's rows (more than
  // kFewRows) split among the rank's threads, a decode step's on this thread (waking the workers
  // would cost more than it saves). For row-wise work only, so the split changes no result.
  template <typename F>
  void on_row_slices(int64_t rows, F f) {
    const int threads = workers_.size();
    if (threads == 1 || rows <= kFewRows) return f(0, rows);
    workers_.run([&](int t) { f(rows * t / threads, rows * (t + 1) / threads); });
  }

  // RoPE on rows [t0, t1) of q and k by the cached cos and sin of their tokens' angles.
  void rotate_rows(Tensor& q, Tensor& k, int64_t t0, int64_t t1, int head_dim) const {
    const int half = head_dim / 2;
    for (int64_t t = t0; t < t1; ++t) {
      const float* cos_ = rope_cos_.data() + t * half;
      const float* sin_ = rope_sin_.data() + t * half;
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

  // y (+)= x w^T by the many-rows kernel, w in any stored type.
  void many_rows(const Tensor& x, const Tensor& w, bool accumulate, Tensor& y) {
    const int64_t M = x.rows, N = w.rows, K = w.cols;
    switch (w.dtype) {
      case DType::F32: return many_rows_matmul(workers_, x.f32(), M, K, w.f32(), N, y.f32(), accumulate);
      case DType::BF16:
        return many_rows_matmul(workers_, x.f32(), M, K, static_cast<const BFloat16*>(w.ptr), N, y.f32(), accumulate);
      case DType::F16:
        return many_rows_matmul(workers_, x.f32(), M, K, static_cast<const Half*>(w.ptr), N, y.f32(), accumulate);
      case DType::Q8_0: return many_rows_matmul(workers_, x.f32(), M, K, q8_0_of(w).blocks, N, y.f32(), accumulate);
    }
  }

  // weights.bf16_dot on a product of more than kFewRows rows (a prefill pass): x rounded to bf16
  // once; the vdpbf16ps tiles where the CPU has AVX512_BF16, else the same rounded values through
  // the exact path (the many-rows kernel or sgemm), as bf16_dot_matmul does for decode-sized ones.
  void bf16_dot_many_rows(const Tensor& x, const Tensor& w, bool accumulate, Tensor& y) {
    const int64_t M = x.rows, N = w.rows, K = w.cols;
    const auto* wb = static_cast<const BFloat16*>(w.ptr);
    if (dpbf16_ && many_rows_) return many_rows_bf16_dot(workers_, x.f32(), M, K, wb, N, y.f32(), accumulate);
    rounded_x_.resize(M * K);
    for (int64_t i = 0; i < M * K; ++i) rounded_x_[i] = to_float(to_bf16(x.f32()[i]));
    Tensor rounded = x;  // a view of the rounded copy, same shape
    rounded.storage = nullptr;
    rounded.ptr = rounded_x_.data();
    if (many_rows_) return many_rows(rounded, w, accumulate, y);
    narrow_matmul(rounded, wb, N, K, accumulate, y);
  }

  // The attention of one sequence's new tokens (a prompt, or a prompt's continuation) by the
  // many-rows kernel: the work is cut into (head, block of kQueryBlock queries) pieces, which the
  // rank's threads take one at a time, the latest blocks first: a causal block's work grows with
  // the keys it sees, and handing out the largest first keeps the threads' shares even (a fixed
  // round-robin left one of two threads 54% of a 512-token prompt's work). Each
  // piece writes its own part of `out`, so who computes it changes no result. A block's queries
  // see keys [first, end): the causal ones no key past the block's last query, so the products
  // skip the masked upper triangle but for the block's own diagonal part.
  void prompt_attention(const Tensor& q, const Tensor& K, const Tensor& V, const SequenceSlot& s,
                        const AttentionHeads& heads, bool causal, Tensor& out) {
    constexpr int64_t kQueryBlock = 56;  // 4 of the kernel's 14-row tiles
    const int head_dim = heads.head_dim;
    const float scale = 1.f / std::sqrt(float(head_dim));
    const int64_t ctx = s.past + s.n_new, blocks = (s.n_new + kQueryBlock - 1) / kQueryBlock;
    const int64_t pieces = heads.n_heads * blocks;
    workers_.run_items(pieces, [&](int64_t piece) {  // pieces to whichever thread asks next
      thread_local std::vector<float> scores;
      const int h = static_cast<int>(piece % heads.n_heads);  // the last block of every head, then the one before...
      const int64_t i0 = (blocks - 1 - piece / heads.n_heads) * kQueryBlock, rows = std::min(kQueryBlock, s.n_new - i0);
      // Query i (position past + i) sees keys [visible - window, visible) (or all keys when not causal).
      auto visible = [&](int64_t i) { return causal ? s.past + i + 1 : ctx; };
      auto first_key = [&](int64_t i) { return heads.window > 0 ? std::max<int64_t>(0, visible(i) - heads.window) : 0; };
      const int64_t first = first_key(i0), end = visible(i0 + rows - 1), n = end - first;
      const float* Qh = q.row(s.token_begin + i0) + h * head_dim;
      const float* Kh = K.row(s.cache_base + first) + heads.kv_head(h) * head_dim;
      const float* Vh = V.row(s.cache_base + first) + heads.kv_head(h) * head_dim;
      // scores = Q K^T  [rows, n]; softmax(scale * scores) row by row over each query's keys
      scores.resize(rows * n);
      matmul_nt(Qh, q.cols, rows, head_dim, Kh, K.cols, n, scores.data(), n);
      for (int64_t i = 0; i < rows; ++i) {
        float* row = scores.data() + i * n;
        const int64_t a = first_key(i0 + i) - first, b = visible(i0 + i) - first;
        const float mx = *std::max_element(row + a, row + b);
        const float inv = 1.f / exp_and_sum(row + a, b - a, scale, scale * mx);
        for (int64_t j = a; j < b; ++j) row[j] *= inv;
        std::fill(row, row + a, 0.f);
        std::fill(row + b, row + n, 0.f);
      }
      // out = softmax(scores) V  [rows, head_dim]
      matmul_nn(scores.data(), n, rows, n, Vh, V.cols, head_dim, out.row(s.token_begin + i0) + h * head_dim, out.cols);
    });
  }

  // A weight matrix of `dtype` with its contents unset, in weight memory (huge pages).
  Tensor weight_tensor(int64_t rows, int64_t cols, DType dtype) {
    Tensor t;
    t.rows = rows;
    t.cols = cols;
    t.dtype = dtype;
    t.storage = weight_memory_.take(static_cast<size_t>(t.bytes()));
    t.ptr = t.storage.get();
    return t;
  }

  template <typename W>
  Tensor narrow_tensor(const std::vector<float>& host, int64_t rows, int64_t cols, W (*narrow)(float)) {
    Tensor t = weight_tensor(rows, cols, std::is_same_v<W, BFloat16> ? DType::BF16 : DType::F16);
    W* mem = static_cast<W*>(t.ptr);
    for (int64_t i = 0; i < rows * cols; ++i) mem[i] = narrow(host[i]);
    return t;
  }

  void narrow_embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) {
    for (size_t i = 0; i < ids.size(); ++i) {
      float* dst = out.row(i);
      for (int64_t c = 0; c < out.cols; ++c) {
        const int64_t at = int64_t(ids[i]) * table.cols + c;
        const float v = table.dtype == DType::BF16  ? to_float(static_cast<const BFloat16*>(table.ptr)[at])
                        : table.dtype == DType::F16 ? to_float(static_cast<const Half*>(table.ptr)[at])
                                                    : q8_0_of(table)[at];
        dst[c] = accumulate ? dst[c] + v : v;
      }
    }
  }

  // Rows of 32-value blocks (the loader has checked that cols is a multiple of 32).
  Tensor q8_0_tensor(const std::vector<float>& host, int64_t rows, int64_t cols) {
    Tensor t = weight_tensor(rows, cols, DType::Q8_0);
    BlockQ8_0* mem = static_cast<BlockQ8_0*>(t.ptr);
    for (int64_t b = 0; b < rows * cols / kQ8_0Block; ++b) mem[b] = quantize_q8_0(host.data() + b * kQ8_0Block);
    return t;
  }
  static Q8_0Ptr q8_0_of(const Tensor& t) { return {static_cast<const BlockQ8_0*>(t.ptr)}; }
  // out[0, n) = the stored values [from, from + n) as fp32.
  template <typename T>
  static void widen(const T* w, int64_t from, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = to_float(w[from + i]);
  }
  static void widen(Q8_0Ptr w, int64_t from, int64_t n, float* out) {  // whole blocks: from, n multiples of 32
    for (int64_t b = from / kQ8_0Block; b < (from + n) / kQ8_0Block; ++b, out += kQ8_0Block) {
      const float d = to_float(w.blocks[b].d);
      for (int64_t i = 0; i < kQ8_0Block; ++i) out[i] = float(w.blocks[b].q[i]) * d;
    }
  }
  // What the few-rows kernel takes: the stored array.
  template <typename T>
  static const T* stored(const T* w) { return w; }
  static const BlockQ8_0* stored(Q8_0Ptr w) { return w.blocks; }

  // y[M, N] (+)= x[M, K] w[N, K]^T with 16-bit or q8_0 w (W: a pointer, or Q8_0Ptr). Decode-sized
  // passes: the few-rows kernel (its scalar path too: OpenBLAS has no narrow-weight product).
  // Larger ones: kPanel rows of w at a time widened to fp32 and multiplied by sgemm; the widening
  // (N K conversions) is small beside the product's M N K multiply-adds once M is over kFewRows.
  template <typename W>
  void narrow_matmul(const Tensor& x, W w, int64_t N, int64_t K, bool accumulate, Tensor& y) {
    const int64_t M = x.rows;
    if constexpr (std::is_same_v<W, const BFloat16*>)
      if (M <= kFewRows && bf16_dot_)
        return bf16_dot_matmul(dpbf16_, simd_, workers_, x.f32(), M, K, w, N, y.f32(), accumulate, x_bf16_);
    if constexpr (std::is_same_v<W, Q8_0Ptr>)
      if (M <= kFewRows && q8_dot_)
        return q8_dot_matmul(q8_level_, workers_, x.f32(), M, K, stored(w), N, y.f32(), accumulate, x_q8_);
    if (M <= kFewRows) {
      few_rows_matmul(simd_, workers_, x.f32(), M, K, stored(w), N, y.f32(), accumulate);
      return;
    }
    constexpr int64_t kPanel = 256;
    panel_.resize(kPanel * K);
    for (int64_t n0 = 0; n0 < N; n0 += kPanel) {
      const int64_t n = std::min(kPanel, N - n0);
      widen(w, n0 * K, n * K, panel_.data());
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n, K, 1.f, x.f32(), K, panel_.data(), K,
                  accumulate ? 1.f : 0.f, y.f32() + n0, N);
    }
  }

  const int threads_;      // the rank's `threads`: OpenBLAS's and the few-rows kernel's
  const DType weights_;    // weight matrices' storage type
  const bool bf16_dot_;    // weights.bf16_dot: products with bf16 weights round x to bf16
  const bool dpbf16_;      // ... and multiply with vdpbf16ps (AVX512_BF16)
  const bool q8_dot_;      // weights.q8_dot: q8_0 decode products quantise x to q8_0
  const Q8DotLevel q8_level_;  // ... and sum its int8 products with this instruction set
  const SimdLevel simd_;   // the few-rows kernel's instruction set (scalar: OpenBLAS instead)
  const bool many_rows_;   // the many-rows kernel runs here (AVX-512): larger products and prompts' attention
  WorkerThreads workers_;  // the own kernels' threads
  WeightMemory weight_memory_;  // weight matrices' memory (huge pages)
  std::vector<float> scores_;
  std::vector<int32_t> rope_positions_;         // the positions and frequencies of ...
  std::vector<float> rope_inv_freq_;
  std::vector<float> rope_cos_, rope_sin_;      // ... these angles' cos and sin [tokens, head_dim / 2]
  std::vector<float> panel_;  // narrow_matmul's widened rows of w
  std::vector<BFloat16> x_bf16_;  // bf16_dot_matmul's rounded x
  std::vector<float> rounded_x_;  // bf16_dot without vdpbf16ps, larger products: the rounded x widened back
  Q8Activations x_q8_;            // q8_dot_matmul's quantised x
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads, DType weights, bool bf16_dot, bool q8_dot) {
  return std::make_unique<CpuBackend>(threads, weights, bf16_dot, q8_dot);
}

}  // namespace lowsync
