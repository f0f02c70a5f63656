// CUDA kernels: plain and readable before fast. Element-wise steps use grid-stride loops; a norm
// is one block per row; attention is one block per (query row, head) streaming over the sequence's
// cached keys in chunks with an online softmax. Everything accumulates in fp32, in the same order
// of operations as the CPU backend where that matters for exactness tests.
#include "layers/cuda_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "layers/cuda_memory.h"

namespace lowsync::cuda {

namespace {

constexpr int kThreads = 256;       // element-wise kernels and norms
constexpr int kAttnThreads = 128;   // attention: 4 warps per (query, head)
constexpr int kAttnChunk = 256;     // keys scored per step of the online softmax
constexpr int kDimsPerThread = kMaxHeadDim / kAttnThreads;
static_assert(kMaxHeadDim % kAttnThreads == 0);

void check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

// Blocks for a grid-stride loop over n elements (n > 0); capped since the loop covers the rest.
unsigned blocks_for(int64_t n) { return static_cast<unsigned>(std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16)); }

#define GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__device__ float to_float(float x) { return x; }
__device__ float to_float(__half x) { return __half2float(x); }
__device__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ T from_float(float x);
template <>
__device__ float from_float<float>(float x) { return x; }
template <>
__device__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ float warp_max(float v) {
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or max) of v over the block, returned to every thread. blockDim.x is a multiple of 32.
// Contains __syncthreads, so every thread of the block must call it.
template <bool kMax>
__device__ float block_reduce(float v) {
  __shared__ float partial[32];
  __shared__ float result;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = kMax ? warp_max(v) : warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const float identity = kMax ? -INFINITY : 0.f;
    v = lane < int(blockDim.x / 32) ? partial[lane] : identity;
    v = kMax ? warp_max(v) : warp_sum(v);
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}
__device__ float block_sum(float v) { return block_reduce<false>(v); }
__device__ float block_max(float v) { return block_reduce<true>(v); }

// ---- conversion, embedding ----------------------------------------------------------------------

template <class T>
__global__ void convert_kernel(const float* in, T* out, int64_t n) {
  GRID_STRIDE(i, n) out[i] = from_float<T>(in[i]);
}

template <class T>
__global__ void embedding_kernel(const T* table, int64_t table_cols, const int32_t* ids, int64_t n, int64_t cols,
                                 float* out, bool accumulate) {
  GRID_STRIDE(idx, n * cols) {
    const int64_t i = idx / cols, c = idx % cols;
    const float v = to_float(table[int64_t(ids[i]) * table_cols + c]);
    out[idx] = accumulate ? out[idx] + v : v;
  }
}

// ---- norms: one block per row -------------------------------------------------------------------

__global__ void rmsnorm_kernel(const float* x, const float* w, float eps, int64_t cols, float* out) {
  const float* a = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float ss = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) ss += a[c] * a[c];
  ss = block_sum(ss);
  const float inv = 1.f / sqrtf(ss / float(cols) + eps);
  // Each thread rewrites only the elements it read, after the reduction: in place is safe.
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = w[c] * (a[c] * inv);
}

__global__ void layernorm_kernel(const float* x, const float* w, const float* b, float eps, int64_t cols, float* out) {
  const float* a = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float sum = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += a[c];
  const float mean = block_sum(sum) / float(cols);
  float var = 0.f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) var += (a[c] - mean) * (a[c] - mean);
  const float inv = 1.f / sqrtf(block_sum(var) / float(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) o[c] = (a[c] - mean) * inv * w[c] + b[c];
}

// ---- rotary embedding ---------------------------------------------------------------------------

// One thread per (row, head, i < head_dim / 2) rotates the pair (x[i], x[i + half]).
__global__ void rope_kernel(float* x, int64_t rows, int64_t cols, const int32_t* positions, int head_dim,
                            float theta) {
  const int half = head_dim / 2;
  const int64_t pairs_per_row = cols / 2;
  GRID_STRIDE(idx, rows * pairs_per_row) {
    const int64_t r = idx / pairs_per_row, p = idx % pairs_per_row;
    const int64_t h = p / half;
    const int i = static_cast<int>(p % half);
    // The CPU backend's (and transformers') fp32 arithmetic: inv_freq, then position * inv_freq.
    const float inv_freq = 1.f / powf(theta, float(2 * i) / float(head_dim));
    const float angle = float(positions[r]) * inv_freq;
    const float cs = cosf(angle), sn = sinf(angle);
    float* v = x + r * cols + h * head_dim;
    const float a = v[i], b = v[i + half];
    v[i] = a * cs - b * sn;
    v[i + half] = b * cs + a * sn;
  }
}

// ---- KV cache, attention ------------------------------------------------------------------------

__global__ void store_kv_kernel(const float* k, const float* v, int64_t rows, int64_t src_cols,
                                const int64_t* cache_row, float* k_cache, float* v_cache, int64_t cache_cols) {
  GRID_STRIDE(idx, rows * src_cols) {
    const int64_t r = idx / src_cols, c = idx % src_cols;
    const int64_t dst = cache_row[r] * cache_cols + c;
    k_cache[dst] = k[idx];
    v_cache[dst] = v[idx];
  }
}

// Block (row t, head h): the query attends to keys 0 .. visible-1 of its sequence. Keys are taken
// kAttnChunk at a time: each warp scores keys (lanes split the head dim), then the block updates the
// running max m and normaliser l of the online softmax and rescales its output accumulator. Thread
// tid owns output dims tid, tid + 128, ... Two sweeps over a chunk's scores cost little next to
// reading K and V, and keep every quantity fp32.
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(AttentionArgs a) {
  __shared__ float q_s[kMaxHeadDim];
  __shared__ float p[kAttnChunk];
  const int64_t t = blockIdx.x;
  const int h = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, n_warps = kAttnThreads / 32;
  const SequenceSlot s = a.seqs[a.seq_of_row[t]];
  const int64_t i = t - s.token_begin;
  const int64_t visible = a.causal ? s.past + i + 1 : s.past + s.n_new;
  const int kvh = (h + a.q_offset) / a.group;
  const float* k0 = a.k_cache + s.cache_base * a.cache_cols + int64_t(kvh) * a.head_dim;
  const float* v0 = a.v_cache + s.cache_base * a.cache_cols + int64_t(kvh) * a.head_dim;
  for (int d = tid; d < a.head_dim; d += kAttnThreads) q_s[d] = a.q[t * a.q_cols + int64_t(h) * a.head_dim + d];
  __syncthreads();

  float m = -INFINITY, l = 0.f;
  float acc[kDimsPerThread] = {};
  for (int64_t j0 = 0; j0 < visible; j0 += kAttnChunk) {
    const int n = static_cast<int>(min(int64_t(kAttnChunk), visible - j0));
    for (int jj = warp; jj < n; jj += n_warps) {
      const float* kr = k0 + (j0 + jj) * a.cache_cols;
      float dot = 0.f;
      for (int d = lane; d < a.head_dim; d += 32) dot += q_s[d] * kr[d];
      dot = warp_sum(dot);
      if (lane == 0) p[jj] = dot * a.scale;
    }
    __syncthreads();
    float chunk_max = -INFINITY;
    for (int jj = tid; jj < n; jj += kAttnThreads) chunk_max = fmaxf(chunk_max, p[jj]);
    const float m_new = fmaxf(m, block_max(chunk_max));
    const float correction = expf(m - m_new);  // 0 on the first chunk (m = -inf)
    float chunk_sum = 0.f;
    for (int jj = tid; jj < n; jj += kAttnThreads) {
      const float e = expf(p[jj] - m_new);
      p[jj] = e;
      chunk_sum += e;
    }
    l = l * correction + block_sum(chunk_sum);  // block_sum's barrier also publishes p
    for (int k = 0; k < kDimsPerThread; ++k) {
      const int d = tid + k * kAttnThreads;
      if (d >= a.head_dim) break;
      float acc_d = acc[k] * correction;
      for (int jj = 0; jj < n; ++jj) acc_d += p[jj] * v0[(j0 + jj) * a.cache_cols + d];
      acc[k] = acc_d;
    }
    m = m_new;
    __syncthreads();  // the next chunk overwrites p
  }
  float* o = a.out + t * a.out_cols + int64_t(h) * a.head_dim;
  for (int k = 0; k < kDimsPerThread; ++k) {
    const int d = tid + k * kAttnThreads;
    if (d < a.head_dim) o[d] = acc[k] / l;
  }
}

// ---- element-wise -------------------------------------------------------------------------------

__global__ void gelu_kernel(float* x, int64_t n, bool tanh_approximation) {
  const float c = sqrtf(2.f / 3.14159265358979323846f);
  GRID_STRIDE(i, n) {
    const float a = x[i];
    x[i] = tanh_approximation ? 0.5f * a * (1.f + tanhf(c * (a + 0.044715f * a * a * a)))
                              : 0.5f * a * (1.f + erff(a / sqrtf(2.f)));
  }
}

__global__ void silu_mul_kernel(float* gate, const float* up, int64_t n) {
  GRID_STRIDE(i, n) gate[i] = gate[i] / (1.f + expf(-gate[i])) * up[i];
}

__global__ void axpy_kernel(float alpha, const float* y, float* x, int64_t n) {
  GRID_STRIDE(i, n) x[i] += alpha * y[i];
}

__global__ void add_bias_kernel(float* x, const float* bias, int64_t rows, int64_t cols) {
  GRID_STRIDE(i, rows * cols) x[i] += bias[i % cols];
}

__global__ void gather_rows_kernel(const float* x, int64_t cols, const int64_t* rows, int64_t n, float* out) {
  GRID_STRIDE(idx, n * cols) out[idx] = x[rows[idx / cols] * cols + idx % cols];
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

void convert_from_f32(const float* in, void* out, DType dtype, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  switch (dtype) {
    case DType::F32: convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, static_cast<float*>(out), n); break;
    case DType::F16: convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, static_cast<__half*>(out), n); break;
    case DType::BF16:
      convert_kernel<<<blocks_for(n), kThreads, 0, stream>>>(in, static_cast<__nv_bfloat16*>(out), n);
      break;
    case DType::Q8_0: break;  // CPU only: CudaBackend refuses it when constructed
  }
  check_launch("convert_kernel");
}

void embedding(const void* table, DType dtype, int64_t table_cols, const int32_t* ids, int64_t n, int64_t cols,
               float* out, bool accumulate, cudaStream_t stream) {
  if (n == 0 || cols == 0) return;
  const unsigned g = blocks_for(n * cols);
  switch (dtype) {
    case DType::F32:
      embedding_kernel<<<g, kThreads, 0, stream>>>(static_cast<const float*>(table), table_cols, ids, n, cols, out,
                                                   accumulate);
      break;
    case DType::F16:
      embedding_kernel<<<g, kThreads, 0, stream>>>(static_cast<const __half*>(table), table_cols, ids, n, cols, out,
                                                   accumulate);
      break;
    case DType::BF16:
      embedding_kernel<<<g, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(table), table_cols, ids, n, cols,
                                                   out, accumulate);
      break;
    case DType::Q8_0: break;  // CPU only: CudaBackend refuses it when constructed
  }
  check_launch("embedding_kernel");
}

void rmsnorm(const float* x, const float* w, float eps, int64_t rows, int64_t cols, float* out, cudaStream_t stream) {
  if (rows == 0) return;
  rmsnorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, eps, cols, out);
  check_launch("rmsnorm_kernel");
}

void layernorm(const float* x, const float* w, const float* b, float eps, int64_t rows, int64_t cols, float* out,
               cudaStream_t stream) {
  if (rows == 0) return;
  layernorm_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(x, w, b, eps, cols, out);
  check_launch("layernorm_kernel");
}

void rope(float* x, int64_t rows, int64_t cols, const int32_t* positions, int head_dim, float theta,
          cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  rope_kernel<<<blocks_for(rows * cols / 2), kThreads, 0, stream>>>(x, rows, cols, positions, head_dim, theta);
  check_launch("rope_kernel");
}

void store_kv(const float* k, const float* v, int64_t rows, int64_t src_cols, const int64_t* cache_row,
              float* k_cache, float* v_cache, int64_t cache_cols, cudaStream_t stream) {
  if (rows == 0 || src_cols == 0) return;
  store_kv_kernel<<<blocks_for(rows * src_cols), kThreads, 0, stream>>>(k, v, rows, src_cols, cache_row, k_cache,
                                                                        v_cache, cache_cols);
  check_launch("store_kv_kernel");
}

void attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.n_heads == 0) return;
  if (a.head_dim > kMaxHeadDim || a.n_kv_heads <= 0 || a.group <= 0 || a.q_offset < 0 ||
      (a.n_heads - 1 + a.q_offset) / a.group >= a.n_kv_heads)
    throw std::runtime_error("CUDA attention: head_dim " + std::to_string(a.head_dim) + " (at most " +
                             std::to_string(kMaxHeadDim) + "), heads " + std::to_string(a.n_heads) + " / kv heads " +
                             std::to_string(a.n_kv_heads) + " not supported");
  if (a.rows > 0x7fffffff || a.n_heads > 65535)
    throw std::runtime_error("CUDA attention: grid of " + std::to_string(a.rows) + " x " + std::to_string(a.n_heads) +
                             " blocks too large");
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.n_heads));
  attention_kernel<<<grid, kAttnThreads, 0, stream>>>(a);
  check_launch("attention_kernel");
}

void gelu(float* x, int64_t n, bool tanh_approximation, cudaStream_t stream) {
  if (n == 0) return;
  gelu_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, tanh_approximation);
  check_launch("gelu_kernel");
}

void silu_mul(float* gate, const float* up, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads, 0, stream>>>(gate, up, n);
  check_launch("silu_mul_kernel");
}

void axpy(float alpha, const float* y, float* x, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  axpy_kernel<<<blocks_for(n), kThreads, 0, stream>>>(alpha, y, x, n);
  check_launch("axpy_kernel");
}

void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, stream>>>(x, bias, rows, cols);
  check_launch("add_bias_kernel");
}

void gather_rows(const float* x, int64_t cols, const int64_t* rows, int64_t n, float* out, cudaStream_t stream) {
  if (n == 0 || cols == 0) return;
  gather_rows_kernel<<<blocks_for(n * cols), kThreads, 0, stream>>>(x, cols, rows, n, out);
  check_launch("gather_rows_kernel");
}

}  // namespace lowsync::cuda
