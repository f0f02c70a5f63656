#pragma once
// A 16 x 16 block of 32-bit values transposed in 16 AVX-512 registers, for the many-rows kernels'
// packing of weight panels: fp32 weights (many_rows_matmul) and pairs of bf16 weights, one pair per
// 32-bit lane (many_rows_bf16_dot).
#include <immintrin.h>

#include "layers/widen_avx512.h"  // LOWSYNC_AVX512

namespace lowsync {

// The 64-bit halves of each 128-bit lane: [a0 a1 b0 b1] and [a2 a3 b2 b3].
LOWSYNC_AVX512 inline __m512 unpack_lo64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
LOWSYNC_AVX512 inline __m512 unpack_hi64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// r[i][j] -> r[j][i] for a 16 x 16 block in 16 registers: pairs, then pairs of pairs within each
// 128-bit lane (unpack), then the lanes themselves (two rounds of shuffle_f32x4). Moves bits only:
// any 32-bit values (as __m512).
LOWSYNC_AVX512 inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // r[4i + c], lane L: column 4L + c of rows 4i .. 4i + 3
    r[4 * i] = unpack_lo64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = unpack_hi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = unpack_lo64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = unpack_hi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), u1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xee);
    const __m512 v0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44), v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xee);
    t[c] = _mm512_shuffle_f32x4(u0, v0, 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(u0, v0, 0xdd);
    t[8 + c] = _mm512_shuffle_f32x4(u1, v1, 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(u1, v1, 0xdd);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

}  // namespace lowsync
