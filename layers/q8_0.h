#pragma once
// Q8_0, GGUF's 8-bit weight format (`weights.dtype: q8_0`): each row of a weight matrix [N, K] is cut
// along K (the reduction dimension) into blocks of 32 values, stored as one fp16 scale d and 32
// signed bytes q, value = q x d. Quantising a block, exactly as ggml's reference
// (quantize_row_q8_0_ref) and the `gguf` package do: d = max |x| / 127 in fp32, q = round(x / d)
// computed as x x (1 / d), halves away from zero, then d stored as fp16.
#include <cmath>
#include <cstdint>

#include "layers/narrow_float.h"

namespace lowsync {

constexpr int64_t kQ8_0Block = 32;

struct BlockQ8_0 {
  Half d;
  int8_t q[kQ8_0Block];
};
static_assert(sizeof(BlockQ8_0) == 34, "GGUF's Q8_0 block is 34 bytes");

// 32 values -> one block.
inline BlockQ8_0 quantize_q8_0(const float* x) {
  float amax = 0;
  for (int64_t i = 0; i < kQ8_0Block; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const float d = amax / 127.f, id = d != 0 ? 1.f / d : 0.f;
  BlockQ8_0 b;
  for (int64_t i = 0; i < kQ8_0Block; ++i) b.q[i] = int8_t(std::round(x[i] * id));
  b.d = to_half(d);
  return b;
}

// A position in a Q8_0 matrix stored row after row, as a flat value index: since K is a multiple
// of 32, value n K + k lies in block (n K + k) / 32 at (n K + k) % 32, so the matmul kernels step
// through it as through a pointer (w + j K, w + k).
struct Q8_0Ptr {
  const BlockQ8_0* blocks;
  int64_t at = 0;  // flat value index
  Q8_0Ptr operator+(int64_t n) const { return {blocks, at + n}; }
  const BlockQ8_0& block() const { return blocks[at / kQ8_0Block]; }
  const int8_t* q() const { return block().q + at % kQ8_0Block; }
  float scale() const { return to_float(block().d); }
  float operator[](int64_t i) const {  // the dequantised value i places on (exact in fp32)
    const Q8_0Ptr p = *this + i;
    return float(*p.q()) * p.scale();
  }
};

}  // namespace lowsync
