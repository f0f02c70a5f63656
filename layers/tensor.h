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
  // Bytes of n rows as stored (a Q8_0 row is cols / 32 blocks of 34 bytes): where row r begins is
  // ptr + row_bytes(r).
  int64_t row_bytes(int64_t n = 1) const {
    return dtype == DType::Q8_0 ? n * cols / 32 * 34 : n * cols * (dtype == DType::F32 ? 4 : 2);
  }
  int64_t bytes() const { return row_bytes(rows); }
  float* f32() const { return static_cast<float*>(ptr); }
  float* row(int64_t r) const { return f32() + r * cols; }
};

}  // namespace lowsync
