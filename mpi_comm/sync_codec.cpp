#include "mpi_comm/sync_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace lowsync {

int64_t encoded_bytes(SyncDType d, int64_t n) {
  switch (d) {
    case SyncDType::F32: return 4 * n;
    case SyncDType::BF16: return 2 * n;
    case SyncDType::Q8: return n / kQ8Block * kQ8BlockBytes;
  }
  return 0;
}

double sync_bytes_per_value(SyncDType d) { return d == SyncDType::Q8 ? double(kQ8BlockBytes) / kQ8Block : encoded_bytes(d, 1); }

namespace {

// fp32 -> bfloat16, rounding to nearest even (NaN kept a NaN).
uint16_t to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float from_bf16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

// One q8 block: scale = max |x| / 127, q = round(x / scale) in [-127, 127]; error <= scale / 2.
void encode_q8_block(const float* x, uint8_t* out) {
  float amax = 0;
  for (int i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float scale = amax / 127.f;
  const float inv = scale > 0 ? 1.f / scale : 0.f;
  std::memcpy(out, &scale, 4);
  auto* q = reinterpret_cast<int8_t*>(out + 4);
  for (int i = 0; i < kQ8Block; ++i) q[i] = static_cast<int8_t>(std::lrintf(std::clamp(x[i] * inv, -127.f, 127.f)));
}

template <bool Add>
void decode_impl(SyncDType d, const uint8_t* in, int64_t n, float* out) {
  switch (d) {
    case SyncDType::F32: {
      const auto* v = reinterpret_cast<const float*>(in);
      for (int64_t i = 0; i < n; ++i) out[i] = Add ? out[i] + v[i] : v[i];
      break;
    }
    case SyncDType::BF16: {
      const auto* h = reinterpret_cast<const uint16_t*>(in);
      for (int64_t i = 0; i < n; ++i) out[i] = Add ? out[i] + from_bf16(h[i]) : from_bf16(h[i]);
      break;
    }
    case SyncDType::Q8:
      for (int64_t b = 0; b < n / kQ8Block; ++b, in += kQ8BlockBytes) {
        float scale;
        std::memcpy(&scale, in, 4);
        const auto* q = reinterpret_cast<const int8_t*>(in + 4);
        float* o = out + b * kQ8Block;
        for (int i = 0; i < kQ8Block; ++i) o[i] = Add ? o[i] + scale * q[i] : scale * q[i];
      }
      break;
  }
}

}  // namespace

void encode(SyncDType d, const float* x, int64_t n, uint8_t* out) {
  switch (d) {
    case SyncDType::F32: std::memcpy(out, x, 4 * n); break;
    case SyncDType::BF16: {
      auto* h = reinterpret_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) h[i] = to_bf16(x[i]);
      break;
    }
    case SyncDType::Q8:
      for (int64_t b = 0; b < n / kQ8Block; ++b) encode_q8_block(x + b * kQ8Block, out + b * kQ8BlockBytes);
      break;
  }
}

void decode_add(SyncDType d, const uint8_t* in, int64_t n, float* acc) { decode_impl<true>(d, in, n, acc); }
void decode(SyncDType d, const uint8_t* in, int64_t n, float* out) { decode_impl<false>(d, in, n, out); }

}  // namespace lowsync
