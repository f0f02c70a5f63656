#pragma once
// 16-bit floats for weights stored narrower than fp32 on the CPU (`weights.dtype`): bfloat16 (fp32's
// exponent, 8 bits of significand) and IEEE half (5-bit exponent, 11 bits of significand). Each is
// a distinct type so that the matmul kernels overload on it. Conversions to fp32 are exact; from
// fp32 they round to nearest, ties to even, as torch's .to(bfloat16) / .to(float16) do.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lowsync {

struct BFloat16 {
  uint16_t bits;
};
struct Half {
  uint16_t bits;
};

// The largest finite half; fp32 values beyond it would become infinities.
constexpr float kHalfMax = 65504.f;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float to_float(float f) { return f; }
// bf16 is the top half of an fp32.
inline float to_float(BFloat16 b) { return bits_float(uint32_t(b.bits) << 16); }
inline float to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ff;
  if (exp == 0) return std::copysign(std::ldexp(float(man), -24), sign ? -1.f : 1.f);  // zero, subnormal
  if (exp == 31) return bits_float(sign | 0x7f800000 | (man << 13));                   // inf, NaN
  return bits_float(sign | ((exp + 112) << 23) | (man << 13));                          // rebias 15 -> 127
}

// Finite inputs (checkpoint reads refuse NaN and infinity).
inline BFloat16 to_bf16(float f) {
  uint32_t u = float_bits(f);
  u += 0x7fff + ((u >> 16) & 1);  // round the 16 dropped bits to nearest, ties to even
  return {uint16_t(u >> 16)};
}
// Finite inputs; beyond kHalfMax (after rounding) gives an infinity, so callers check the range.
inline Half to_half(float f) {
  const uint16_t sign = uint16_t((float_bits(f) >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (a >= 65520.f) return {uint16_t(sign | 0x7c00)};
  // Below the smallest normal half (2^-14), a half is a multiple of 2^-24: round a * 2^24 (exact)
  // to the nearest integer, ties to even; 1024 lands on the smallest normal's encoding.
  if (a < 6.103515625e-05f) return {uint16_t(sign | uint16_t(std::nearbyint(a * 16777216.f)))};
  uint32_t u = float_bits(a);
  u += 0xfff + ((u >> 13) & 1);  // round the 13 dropped significand bits, carrying into the exponent
  return {uint16_t(sign | ((u - (112u << 23)) >> 13))};
}

}  // namespace lowsync
