#pragma once
// Ownership of CUDA resources: the stream the backend computes on, device buffers and pinned host
// buffers. Every CUDA and cuBLAS call goes through cuda_check/cublas_check, which throw
// std::runtime_error naming the call, so a failure surfaces as an ordinary lowsync error.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace lowsync {

inline void cuda_check(cudaError_t err, const char* call) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA: ") + call + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

inline void cublas_check(cublasStatus_t st, const char* call) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLAS: ") + call + " failed: " + cublasGetStatusName(st) + " (" +
                             cublasGetStatusString(st) + ")");
}

#define LOWSYNC_CUDA_CHECK(call) ::lowsync::cuda_check((call), #call)
#define LOWSYNC_CUBLAS_CHECK(call) ::lowsync::cublas_check((call), #call)

// A non-blocking stream on the current device. Shared by the backend and every buffer allocated on
// it, because buffers are freed in stream order and may outlive the backend object.
class CudaStream {
 public:
  CudaStream() { LOWSYNC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~CudaStream() { cudaStreamDestroy(stream_); }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return stream_; }
  void synchronize() const { LOWSYNC_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

// Device memory from the stream-ordered pool (cudaMallocAsync): allocating and freeing the many
// per-layer activations of a forward pass neither synchronises the device (cudaFree would) nor
// goes to the driver each time. Freed in stream order, so pending kernels may still use it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, std::shared_ptr<CudaStream> stream) : bytes_(bytes), stream_(std::move(stream)) {
    // Never null, even for zero elements: a Tensor with a null pointer reads as "absent".
    LOWSYNC_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes ? bytes : 256, stream_->get()));
  }
  ~DeviceBuffer() { release(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      swap(o);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void release() noexcept {
    // Errors are ignored: a destructor cannot report them, and at process exit the runtime may
    // already be gone.
    if (ptr_) cudaFreeAsync(ptr_, stream_->get());
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(stream_, o.stream_);
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  std::shared_ptr<CudaStream> stream_;
};

// Page-locked host memory: device<->host copies from and to it run at full DMA speed and
// asynchronously, which is why collectives stage device tensors through it.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(size_t bytes) : bytes_(bytes) { LOWSYNC_CUDA_CHECK(cudaMallocHost(&ptr_, bytes ? bytes : 1)); }
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace lowsync
