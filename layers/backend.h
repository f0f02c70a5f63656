#pragma once
// The kernels a transformer needs, behind one interface so that the model code is the same on
// every device. Each kernel is a named step of the math; none of them communicates.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "layers/batch_layout.h"
#include "layers/tensor.h"

namespace lowsync {

// The query heads one rank computes in a layer and the cached key/value heads they read. In
// grouped-query attention `group` consecutive query heads share one kv head; a rank's heads may
// begin part-way into a group (its first kv head is then also cached by the rank before it), so
// local query head h reads local kv head (h + q_offset) / group.
struct AttentionHeads {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int group = 1;     // query heads per kv head in the whole model
  int q_offset = 0;  // query heads of the first local kv head's group that belong to earlier ranks
  int window = 0;    // sliding window: a query at position p sees keys p - window + 1 .. p; 0: all
  int kv_head(int h) const { return (h + q_offset) / group; }
};

// Keys and values of every layer for the sequences of a batch: [capacity, kv_dim] per layer.
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t capacity = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The type upload_weight stores matrices in (vectors stay fp32).
  virtual DType weight_dtype() const { return DType::F32; }

  // Memory.
  virtual Tensor zeros(int64_t rows, int64_t cols) = 0;                          // fp32 activation
  // An fp32 activation the next operation overwrites whole, so its contents may be left unset.
  virtual Tensor scratch(int64_t rows, int64_t cols) { return zeros(rows, cols); }
  virtual Tensor upload_weight(const std::vector<float>& host, int64_t rows, int64_t cols) = 0;
  virtual void to_host(const Tensor& t, float* dst) = 0;                          // rows*cols floats
  virtual void from_host(const float* src, Tensor& t) = 0;                        // rows*cols floats
  // Host memory of an fp32 tensor, or null where it lives on a device (collectives then stage it).
  virtual float* host_data(Tensor& t) { return nullptr; }
  // Host memory for at least n floats through which device tensors are staged for collectives
  // (page-locked where that speeds up the copies), valid until the next call; null: the caller
  // brings its own.
  virtual float* host_staging(int64_t n) { return nullptr; }
  virtual KVCache make_kv_cache(int n_layers, int64_t capacity, int64_t kv_dim);

  // out[i] = table[ids[i]]  (accumulate: out[i] += table[ids[i]])
  virtual void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) = 0;
  // y = x w^T (+ bias), w stored [out_features, in_features] as in Hugging Face checkpoints.
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  virtual void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) = 0;
  virtual void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) = 0;
  // Rotary position embedding (rotate-half form) on every head of q and k, in place.
  virtual void rope(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim, float theta) = 0;
  // The same with given inverse frequencies (head_dim / 2; scaled RoPE, layers/rope_frequencies.h).
  virtual void rope_scaled(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim,
                           const std::vector<float>& inv_freq);
  // Writes this pass's k, v rows into the layer's cache at each sequence's slots.
  virtual void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer, const BatchLayout& layout) = 0;
  // Scaled dot-product attention of the new queries over each sequence's cached keys/values;
  // causal: query at position p sees keys 0..p (p - heads.window + 1 .. p with a sliding window).
  // q: [tokens, heads.n_heads * head_dim].
  virtual void attention(const Tensor& q, const KVCache& cache, int layer, const BatchLayout& layout,
                         const AttentionHeads& heads, bool causal, Tensor& out) = 0;
  virtual void gelu(Tensor& x, bool tanh_approximation) = 0;  // in place
  virtual void silu_mul(Tensor& gate, const Tensor& up) = 0;  // gate = silu(gate) * up
  virtual void gelu_mul(Tensor& gate, const Tensor& up, bool tanh_approximation);  // gate = gelu(gate) * up (GeGLU)
  virtual void scale(Tensor& x, float s);                     // x *= s
  virtual void add(Tensor& x, const Tensor& y) = 0;           // x += y
  virtual void axpy(float alpha, const Tensor& y, Tensor& x) = 0;  // x += alpha * y
  virtual void add_bias(Tensor& x, const Tensor& bias);       // every row of x += bias (1 x cols)
  // out[i] = x[rows[i]]
  virtual void gather_rows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& out) = 0;
  // Whether the backend implements the kernels (and the AttentionHeads fields) the checkpoint
  // families after LLaMA brought: rope_scaled, gelu_mul, scale, sliding windows. The defaults of
  // the first three throw; a model needing them is refused at load on a backend without them.
  virtual bool has_extended_kernels() const { return false; }
};

// `weights`: the type weight matrices are stored in (fp32, bf16 or fp16; products accumulate in fp32).
// bf16_dot: decode products with bf16 weights round x to bf16 (`weights.bf16_dot`; bf16_dot_matmul.h).
// q8_dot: decode products with q8_0 weights quantise x to q8_0 (`weights.q8_dot`; q8_dot_matmul.h).
std::unique_ptr<Backend> make_cpu_backend(int threads, DType weights = DType::F32, bool bf16_dot = false,
                                          bool q8_dot = false);

}  // namespace lowsync
