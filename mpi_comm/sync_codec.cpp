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
uint16_t bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float bf16_value(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

// One q8 block (sync_codec.h): [fp32 outlier][bf16 scale][u8 outlier index][32 x int8], the
// outlier's own int8 0.
void encode_q8_block(const float* x, uint8_t* out) {
  int top = 0;
  for (int i = 1; i < kQ8Block; ++i)
    if (std::fabs(x[i]) > std::fabs(x[top])) top = i;
  float rest = 0;
  for (int i = 0; i < kQ8Block; ++i)
    if (i != top) rest = std::max(rest, std::fabs(x[i]));
  // The scale rounded up to a bf16, so that no |x| / scale exceeds 127.
  const float wanted = rest / 127.f;
  uint16_t s = bf16_bits(wanted);
  if (bf16_value(s) < wanted) ++s;
  const float scale = bf16_value(s), inv = scale > 0 ? 1.f / scale : 0.f;
  const auto index = static_cast<uint8_t>(top);
  std::memcpy(out, &x[top], 4);
  std::memcpy(out + 4, &s, 2);
  std::memcpy(out + 6, &index, 1);
  auto* q = reinterpret_cast<int8_t*>(out + 7);
  for (int i = 0; i < kQ8Block; ++i) q[i] = static_cast<int8_t>(std::lrintf(std::clamp(x[i] * inv, -127.f, 127.f)));
  q[top] = 0;
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
      for (int64_t i = 0; i < n; ++i) out[i] = Add ? out[i] + bf16_value(h[i]) : bf16_value(h[i]);
      break;
    }
    case SyncDType::Q8:
      for (int64_t b = 0; b < n / kQ8Block; ++b, in += kQ8BlockBytes) {
        float outlier;
        uint16_t s;
        std::memcpy(&outlier, in, 4);
        std::memcpy(&s, in + 4, 2);
        const int top = in[6] % kQ8Block;  // a corrupt index stays inside the block
        const float scale = bf16_value(s);
        const auto* q = reinterpret_cast<const int8_t*>(in + 7);
        float* o = out + b * kQ8Block;
        for (int i = 0; i < kQ8Block; ++i) {
          const float v = i == top ? outlier : scale * q[i];
          o[i] = Add ? o[i] + v : v;
        }
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
      for (int64_t i = 0; i < n; ++i) h[i] = bf16_bits(x[i]);
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
