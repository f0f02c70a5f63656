#pragma once
// A 2-D row-major tensor whose memory belongs to a backend (host or device). Vectors are 1 x n.
// Weight matrices may be stored in a narrower type (`weights.dtype` on the CPU, `cuda.dtype` on a
// GPU; layers/narrow_float.h); activations, norm weights and biases are fp32.
#include <cstdint>
#include <memory>

namespace lowsync {

// Q8_0: GGUF's blocks of 32 int8 with one fp16 scale along each row (layers/q8_0.h); CPU only.
enum class DType { F32, F16, BF16, Q8_0 };

struct Tensor {
  std::shared_ptr<void> storage;  // keeps the memory alive; null for an empty tensor
  void* ptr = nullptr;
  int64_t rows = 0, cols = 0;
  DType dtype = DType::F32;

  bool empty() const { return ptr == nullptr; }
  int64_t numel() const { return rows * cols; }
  int64_t bytes() const {  // as stored
    return dtype == DType::Q8_0 ? numel() / 32 * 34 : numel() * (dtype == DType::F32 ? 4 : 2);
  }
  float* f32() const { return static_cast<float*>(ptr); }
  float* row(int64_t r) const { return f32() + r * cols; }
};

}  // namespace lowsync
