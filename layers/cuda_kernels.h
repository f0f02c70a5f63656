#pragma once
// The CUDA kernels of the CUDA backend, one launcher per step of the math, on raw device pointers
// (row-major, fp32 activations). Every launcher enqueues on `stream` and throws std::runtime_error
// if the launch fails; none synchronises. Matrix products are cuBLAS calls in cuda_backend.cpp.
#include <cuda_runtime.h>

#include <cstdint>

#include "layers/batch_layout.h"
#include "layers/tensor.h"

namespace lowsync::cuda {

// Largest head the attention kernel handles (each of its threads owns head_dim / 128 output dims).
constexpr int kMaxHeadDim = 256;

// out[i] = (dtype) in[i]: fp32 -> fp32 (copy), fp16 or bf16, rounding to nearest.
void convert_from_f32(const float* in, void* out, DType dtype, int64_t n, cudaStream_t stream);

// out[i, :] (+)= table[ids[i], :] for i < n; the table is [*, table_cols] in `dtype`, out [n, cols].
void embedding(const void* table, DType dtype, int64_t table_cols, const int32_t* ids, int64_t n, int64_t cols,
               float* out, bool accumulate, cudaStream_t stream);

// out = x / rms(x) * w per row. In place (out == x) is allowed.
void rmsnorm(const float* x, const float* w, float eps, int64_t rows, int64_t cols, float* out, cudaStream_t stream);
// out = (x - mean) / sqrt(var + eps) * w + b per row. In place (out == x) is allowed.
void layernorm(const float* x, const float* w, const float* b, float eps, int64_t rows, int64_t cols, float* out,
               cudaStream_t stream);

// Rotate-half rotary embedding of every head of x [rows, cols] in place; row r sits at positions[r].
void rope(float* x, int64_t rows, int64_t cols, const int32_t* positions, int head_dim, float theta,
          cudaStream_t stream);

// cache[cache_row[r], :src_cols] = src[r, :] for both k and v; the caches are [*, cache_cols].
void store_kv(const float* k, const float* v, int64_t rows, int64_t src_cols, const int64_t* cache_row,
              float* k_cache, float* v_cache, int64_t cache_cols, cudaStream_t stream);

// Attention of packed query rows over their sequences' cached keys/values, one block per
// (query row, head). Row r belongs to seqs[seq_of_row[r]]; see Backend::attention.
struct AttentionArgs {
  const float* q = nullptr;  // [rows, q_cols]
  int64_t q_cols = 0;
  const float* k_cache = nullptr;  // [*, cache_cols]
  const float* v_cache = nullptr;
  int64_t cache_cols = 0;
  const SequenceSlot* seqs = nullptr;
  const int32_t* seq_of_row = nullptr;
  int64_t rows = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int group = 1, q_offset = 0;  // local query head h reads local kv head (h + q_offset) / group
  bool causal = true;
  float scale = 1.f;
  float* out = nullptr;  // [rows, out_cols]
  int64_t out_cols = 0;
};
void attention(const AttentionArgs& a, cudaStream_t stream);

void gelu(float* x, int64_t n, bool tanh_approximation, cudaStream_t stream);  // in place
void silu_mul(float* gate, const float* up, int64_t n, cudaStream_t stream);   // gate = silu(gate) * up
void axpy(float alpha, const float* y, float* x, int64_t n, cudaStream_t stream);  // x += alpha * y
void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);  // x[r, :] += bias
// out[i, :] = x[rows[i], :] for i < n; x and out are [*, cols].
void gather_rows(const float* x, int64_t cols, const int64_t* rows, int64_t n, float* out, cudaStream_t stream);

}  // namespace lowsync::cuda
