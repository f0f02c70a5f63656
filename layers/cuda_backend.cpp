// The CUDA backend: weights uploaded once, activations and the KV cache on the device in fp32,
// matrix products in cuBLAS, everything else in cuda_kernels.cu, all on one stream. Host data
// (token ids, positions, the batch layout) is copied to small device buffers per call with
// cudaMemcpyAsync from pageable memory, which the driver stages before returning, so the caller's
// vector need not outlive the call. Only to_host/from_host wait for the stream to finish.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "io/error.h"
#include "layers/cuda_backend.h"
#include "layers/cuda_kernels.h"
#include "layers/cuda_memory.h"

namespace lowsync {

namespace {

size_t dtype_bytes(DType d) { return d == DType::F32 ? 4 : 2; }
const char* dtype_name(DType d) { return d == DType::F32 ? "fp32" : d == DType::F16 ? "fp16" : "bf16"; }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error("CUDA backend: " + what);
}

std::string shape(const Tensor& t) { return "[" + std::to_string(t.rows) + ", " + std::to_string(t.cols) + "]"; }

// The fp32 data of an activation or vector weight; the element-wise kernels read nothing else.
float* f32(const Tensor& t, const char* what) {
  require(t.dtype == DType::F32, std::string(what) + " must be fp32");
  return t.f32();
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, DType weight_dtype) : device_(device), dtype_(weight_dtype) {
    require(weight_dtype != DType::Q8_0, "q8_0 weights are CPU only; use cuda.dtype bf16, fp16 or fp32");
    LOWSYNC_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop{};
    LOWSYNC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    device_name_ = prop.name;
    // Keep freed blocks in the pool instead of returning them to the driver at every
    // synchronisation: a forward pass frees and reallocates the same activation sizes each layer.
    cudaMemPool_t pool;
    LOWSYNC_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    uint64_t keep = UINT64_MAX;
    LOWSYNC_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    stream_ = std::make_shared<CudaStream>();
    LOWSYNC_CUBLAS_CHECK(cublasCreate(&cublas_));
    LOWSYNC_CUBLAS_CHECK(cublasSetStream(cublas_, stream_->get()));
  }

  ~CudaBackend() override {
    cudaStreamSynchronize(stream_->get());  // errors ignored: nothing to report them to
    cublasDestroy(cublas_);
  }

  std::string name() const override {
    return "cuda (device " + std::to_string(device_) + ": " + device_name_ + ", " + dtype_name(dtype_) + " weights)";
  }
  DType weight_dtype() const override { return dtype_; }

  // ---- memory ----

  Tensor zeros(int64_t rows, int64_t cols) override {
    Tensor t = allocate(rows, cols, DType::F32);
    LOWSYNC_CUDA_CHECK(cudaMemsetAsync(t.ptr, 0, sizeof(float) * t.numel(), stream()));
    return t;
  }

  Tensor scratch(int64_t rows, int64_t cols) override { return allocate(rows, cols, DType::F32); }

  // Matrices in the weight dtype; vectors (biases, norm weights) in fp32 for the element-wise
  // kernels. The conversion runs on the device from an fp32 copy freed right after.
  Tensor upload_weight(const std::vector<float>& host, int64_t rows, int64_t cols) override {
    require(static_cast<int64_t>(host.size()) == rows * cols, "upload_weight: " + std::to_string(host.size()) +
                                                                  " values for " + std::to_string(rows) + " x " +
                                                                  std::to_string(cols));
    const DType dtype = rows == 1 ? DType::F32 : dtype_;
    Tensor t = allocate(rows, cols, dtype);
    if (dtype == DType::F32) {
      copy_in(host.data(), t.ptr, host.size() * sizeof(float));
    } else {
      DeviceBuffer wide(host.size() * sizeof(float), stream_);
      copy_in(host.data(), wide.get(), host.size() * sizeof(float));
      cuda::convert_from_f32(wide.as<float>(), t.ptr, dtype, t.numel(), stream());
    }
    return t;
  }

  void to_host(const Tensor& t, float* dst) override {
    LOWSYNC_CUDA_CHECK(cudaMemcpyAsync(dst, f32(t, "to_host: tensor"), sizeof(float) * t.numel(),
                                       cudaMemcpyDeviceToHost, stream()));
    stream_->synchronize();
  }

  // Waits for the copy, so that `src` may be reused or freed on return.
  void from_host(const float* src, Tensor& t) override {
    copy_in(src, f32(t, "from_host: tensor"), sizeof(float) * t.numel());
    stream_->synchronize();
  }

  float* host_staging(int64_t n) override {
    const size_t bytes = sizeof(float) * n;
    if (staging_.bytes() < bytes) staging_ = PinnedBuffer(bytes);
    return static_cast<float*>(staging_.get());
  }

  // ---- kernels ----

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) override {
    require(out.rows >= static_cast<int64_t>(ids.size()) && out.cols <= table.cols,
            "embedding: out " + shape(out) + " for " + std::to_string(ids.size()) + " ids of table " + shape(table));
    for (int32_t id : ids)
      require(id >= 0 && id < table.rows, "embedding: id " + std::to_string(id) + " outside the table's " +
                                              std::to_string(table.rows) + " rows");
    cuda::embedding(table.ptr, table.dtype, table.cols, upload(ids_, ids), static_cast<int64_t>(ids.size()), out.cols,
                    f32(out, "embedding: out"), accumulate, stream());
  }

  // y = x w^T: cuBLAS is column-major, where row-major y [M, N] is y^T [N, M] = w x^T, with w read
  // as the transpose of its column-major [K, N] self. Narrow weights: x is rounded to their dtype
  // in a scratch buffer and the product accumulates in fp32 (CUBLAS_COMPUTE_32F). fp32 weights:
  // pedantic fp32 (no TF32), which keeps results within 1e-4 of the CPU backend.
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    const int64_t M = x.rows, N = w.rows, K = w.cols;
    require(x.cols == K && y.rows == M && y.cols == N,
            "matmul: x " + shape(x) + " times w " + shape(w) + "^T into y " + shape(y));
    require(M <= INT_MAX && N <= INT_MAX && K <= INT_MAX, "matmul: dimensions beyond cuBLAS's int range");
    if (M == 0 || N == 0) return;
    const void* a = f32(x, "matmul: x");
    cudaDataType type = CUDA_R_32F;
    cublasComputeType_t compute = CUBLAS_COMPUTE_32F_PEDANTIC;
    if (w.dtype != DType::F32) {
      const size_t bytes = dtype_bytes(w.dtype) * x.numel();
      if (narrow_x_.bytes() < bytes) narrow_x_ = DeviceBuffer(bytes, stream_);
      cuda::convert_from_f32(x.f32(), narrow_x_.get(), w.dtype, x.numel(), stream());
      a = narrow_x_.get();
      type = w.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
      compute = CUBLAS_COMPUTE_32F;
    }
    const float one = 1.f, zero = 0.f;
    LOWSYNC_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &one, w.ptr, type,
                                      int(K), a, type, int(K), &zero, f32(y, "matmul: y"), CUDA_R_32F, int(N), compute,
                                      CUBLAS_GEMM_DEFAULT));
    if (bias) add_bias(y, *bias);
  }

  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    require(weight.numel() == x.cols && out.rows == x.rows && out.cols == x.cols, "rmsnorm: shapes");
    cuda::rmsnorm(f32(x, "rmsnorm: x"), f32(weight, "rmsnorm: weight"), eps, x.rows, x.cols, f32(out, "rmsnorm: out"),
                  stream());
  }

  void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) override {
    require(weight.numel() == x.cols && bias.numel() == x.cols && out.rows == x.rows && out.cols == x.cols,
            "layernorm: shapes");
    cuda::layernorm(f32(x, "layernorm: x"), f32(weight, "layernorm: weight"), f32(bias, "layernorm: bias"), eps,
                    x.rows, x.cols, f32(out, "layernorm: out"), stream());
  }

  void rope(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim, float theta) override {
    const int64_t T = static_cast<int64_t>(positions.size());
    require(head_dim > 0 && head_dim % 2 == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 && q.rows >= T &&
                k.rows >= T,
            "rope: q " + shape(q) + ", k " + shape(k) + ", head_dim " + std::to_string(head_dim));
    const int32_t* pos = upload(positions_, positions);
    cuda::rope(f32(q, "rope: q"), T, q.cols, pos, head_dim, theta, stream());
    cuda::rope(f32(k, "rope: k"), T, k.cols, pos, head_dim, theta, stream());
  }

  void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer, const BatchLayout& layout) override {
    require(layer >= 0 && layer < static_cast<int>(cache.k.size()), "store_kv: layer out of range");
    Tensor& kc = cache.k[layer];
    Tensor& vc = cache.v[layer];
    require(k.cols <= kc.cols && v.cols == k.cols && k.rows >= layout.tokens() && v.rows >= layout.tokens(),
            "store_kv: k " + shape(k) + " into cache " + shape(kc));
    std::vector<int64_t> cache_row(layout.tokens());
    for (const SequenceSlot& s : layout.seqs) {
      require(s.cache_base + s.past + s.n_new <= kc.rows, "store_kv: sequence beyond the cache's " +
                                                              std::to_string(kc.rows) + " rows");
      for (int64_t i = 0; i < s.n_new; ++i) cache_row[s.token_begin + i] = s.cache_base + s.past + i;
    }
    cuda::store_kv(f32(k, "store_kv: k"), f32(v, "store_kv: v"), layout.tokens(), k.cols, upload(cache_rows_, cache_row),
                   f32(kc, "store_kv: cache"), f32(vc, "store_kv: cache"), kc.cols, stream());
  }

  void attention(const Tensor& q, const KVCache& cache, int layer, const BatchLayout& layout,
                 const AttentionHeads& heads, bool causal, Tensor& out) override {
    const int n_heads = heads.n_heads, n_kv_heads = heads.n_kv_heads, head_dim = heads.head_dim;
    require(layer >= 0 && layer < static_cast<int>(cache.k.size()), "attention: layer out of range");
    require(heads.window == 0, "attention: sliding windows are not implemented on cuda");  // refused at load before this
    const Tensor& K = cache.k[layer];
    require(int64_t(n_heads) * head_dim <= q.cols && int64_t(n_heads) * head_dim <= out.cols &&
                int64_t(n_kv_heads) * head_dim <= K.cols && q.rows >= layout.tokens() && out.rows >= layout.tokens(),
            "attention: q " + shape(q) + ", cache " + shape(K) + ", out " + shape(out));
    std::vector<int32_t> seq_of_row(layout.tokens());
    for (size_t s = 0; s < layout.seqs.size(); ++s) {
      const SequenceSlot& slot = layout.seqs[s];
      require(slot.cache_base + slot.past + slot.n_new <= K.rows, "attention: sequence beyond the cache");
      for (int64_t i = 0; i < slot.n_new; ++i) seq_of_row[slot.token_begin + i] = static_cast<int32_t>(s);
    }
    cuda::AttentionArgs a;
    a.q = f32(q, "attention: q");
    a.q_cols = q.cols;
    a.k_cache = f32(K, "attention: cache");
    a.v_cache = f32(cache.v[layer], "attention: cache");
    a.cache_cols = K.cols;
    a.seqs = upload(seqs_, layout.seqs);
    a.seq_of_row = upload(seq_of_row_, seq_of_row);
    a.rows = layout.tokens();
    a.n_heads = n_heads;
    a.n_kv_heads = n_kv_heads;
    a.group = heads.group;
    a.q_offset = heads.q_offset;
    a.head_dim = head_dim;
    a.causal = causal;
    a.scale = 1.f / std::sqrt(float(head_dim));
    a.out = f32(out, "attention: out");
    a.out_cols = out.cols;
    cuda::attention(a, stream());
  }

  void gelu(Tensor& x, bool tanh_approximation) override {
    cuda::gelu(f32(x, "gelu: x"), x.numel(), tanh_approximation, stream());
  }

  void silu_mul(Tensor& gate, const Tensor& up) override {
    require(gate.numel() == up.numel(), "silu_mul: gate " + shape(gate) + ", up " + shape(up));
    cuda::silu_mul(f32(gate, "silu_mul: gate"), f32(up, "silu_mul: up"), gate.numel(), stream());
  }

  void add(Tensor& x, const Tensor& y) override { axpy(1.f, y, x); }

  void axpy(float alpha, const Tensor& y, Tensor& x) override {
    require(x.numel() == y.numel(), "add: x " + shape(x) + ", y " + shape(y));
    cuda::axpy(alpha, f32(y, "add: y"), f32(x, "add: x"), x.numel(), stream());
  }

  void add_bias(Tensor& x, const Tensor& bias) override {
    require(bias.numel() == x.cols, "add_bias: x " + shape(x) + ", bias " + shape(bias));
    cuda::add_bias(f32(x, "add_bias: x"), f32(bias, "add_bias: bias"), x.rows, x.cols, stream());
  }

  void gather_rows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& out) override {
    require(out.rows >= static_cast<int64_t>(rows.size()) && out.cols == x.cols, "gather_rows: shapes");
    for (int64_t r : rows) require(r >= 0 && r < x.rows, "gather_rows: row " + std::to_string(r) + " out of range");
    cuda::gather_rows(f32(x, "gather_rows: x"), x.cols, upload(gather_rows_, rows), static_cast<int64_t>(rows.size()),
                      f32(out, "gather_rows: out"), stream());
  }

 private:
  cudaStream_t stream() const { return stream_->get(); }

  Tensor allocate(int64_t rows, int64_t cols, DType dtype) {
    require(rows >= 0 && cols >= 0, "negative shape");
    auto buf = std::make_shared<DeviceBuffer>(dtype_bytes(dtype) * rows * cols, stream_);
    Tensor t;
    t.ptr = buf->get();
    t.storage = std::move(buf);
    t.rows = rows;
    t.cols = cols;
    t.dtype = dtype;
    return t;
  }

  void copy_in(const void* src, void* dst, size_t bytes) {
    LOWSYNC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  }

  // Copies a host vector into a device scratch buffer (grown as needed) and returns its device
  // copy. Later copies into the same buffer are stream-ordered after the kernels reading it.
  template <class T>
  const T* upload(DeviceBuffer& buf, const std::vector<T>& v) {
    const size_t bytes = sizeof(T) * v.size();
    if (buf.bytes() < bytes) buf = DeviceBuffer(bytes, stream_);
    if (bytes) copy_in(v.data(), buf.get(), bytes);
    return buf.as<const T>();
  }

  int device_;
  DType dtype_;
  std::string device_name_;
  std::shared_ptr<CudaStream> stream_;
  cublasHandle_t cublas_ = nullptr;
  PinnedBuffer staging_;
  // Scratch: x rounded to the weight dtype, and the host index vectors of the current call.
  DeviceBuffer narrow_x_, ids_, positions_, cache_rows_, seqs_, seq_of_row_, gather_rows_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, DType weight_dtype, int rank, int local_rank) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the error state for whatever runs next in this process
    throw UserError("backend: cuda: no CUDA device is visible on rank " + std::to_string(rank) + " (" +
                    (err != cudaSuccess ? std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err)
                                        : std::string("cudaGetDeviceCount found 0 devices")) +
                    "); use backend: cpu, or run where a GPU is visible");
  }
  const int chosen = device < 0 ? local_rank % count : device;
  if (chosen >= count) {
    const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
    throw UserError("backend: cuda: cuda.device = " + std::to_string(device) + " but rank " + std::to_string(rank) +
                    " sees only " + std::to_string(count) + " device(s)" +
                    (visible ? " (CUDA_VISIBLE_DEVICES=" + std::string(visible) + ")" : std::string()));
  }
  return std::make_unique<CudaBackend>(chosen, weight_dtype);
}

}  // namespace lowsync
