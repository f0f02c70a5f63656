// The q8_0 x q8_0 decode product (see the header): x quantised once, then tiles of MR rows of x by
// NR rows of w. Per block b of a pair (x row i, w row j) the kernel forms the block's exact int32 sum
// of q_x q_w (in SIMD lanes of 4 products each), converts it to fp32 and adds it, times
// d_x[i, b] d_w[j, b] (exact in fp32: two fp16 values), to the pair's fp32 accumulator:
//
//   AVX512_VNNI: two blocks per step, 64 products per vpdpbusd (block b in lanes 0-7, b + 1 in 8-15);
//   AVX-VNNI:    one block per step, 32 products per vpdpbusd;
//   AVX2:        one block per step, vpmaddubsw (pairs to int16: at most 2 x 127 x 128, no
//                saturation) then vpmaddwd by ones (to int32);
//   scalar:      the block sums in plain int32 loops.
#include "layers/q8_dot_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

namespace lowsync {

bool cpu_runs(Q8DotLevel level) {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  switch (level) {
    case Q8DotLevel::Avx512Vnni:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case Q8DotLevel::AvxVnni: return avx2 && __builtin_cpu_supports("avxvnni");
    case Q8DotLevel::Avx2: return avx2;
    case Q8DotLevel::Scalar: return true;
  }
  return false;
}

Q8DotLevel best_q8_dot_level() {
  for (Q8DotLevel l : {Q8DotLevel::Avx512Vnni, Q8DotLevel::AvxVnni, Q8DotLevel::Avx2})
    if (cpu_runs(l)) return l;
  return Q8DotLevel::Scalar;
}

const char* q8_dot_level_name(Q8DotLevel level) {
  switch (level) {
    case Q8DotLevel::Avx512Vnni: return "avx512_vnni";
    case Q8DotLevel::AvxVnni: return "avx_vnni";
    case Q8DotLevel::Avx2: return "avx2";
    case Q8DotLevel::Scalar: return "scalar";
  }
  return "?";
}

namespace {

#define LOWSYNC_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define LOWSYNC_AVX_VNNI __attribute__((target("avx2,avxvnni,fma,f16c")))
#define LOWSYNC_AVX2 __attribute__((target("avx2,fma,f16c")))

// ---- Quantising x: block by block as quantize_q8_0 (d = max|x| / 127, q = round(x x (1 / d)), halves
// away from zero, d kept as fp16).

void store_block(const BlockQ8_0& blk, int8_t* q, uint8_t* abs_q, float* d8) {
  std::memcpy(q, blk.q, kQ8_0Block);
  for (int64_t k = 0; k < kQ8_0Block; ++k) abs_q[k] = uint8_t(blk.q[k] < 0 ? -blk.q[k] : blk.q[k]);
  std::fill(d8, d8 + 8, to_float(blk.d));
}

// The same block with AVX-512: the same fp32 max, division, reciprocal and products; round() as
// trunc(v) plus v's sign where |v - trunc(v)| >= 1/2 (v - trunc(v) is exact).
LOWSYNC_AVX512_VNNI void quantize_block_avx512(const float* x, int8_t* q, uint8_t* abs_q, float* d8) {
  const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
  const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
  const float d = amax / 127.f, id = d != 0 ? 1.f / d : 0.f;
  const __m512 inv = _mm512_set1_ps(id), half = _mm512_set1_ps(0.5f);
  const __m512i sign_bit = _mm512_set1_epi32(int32_t(0x80000000u)), one = _mm512_castps_si512(_mm512_set1_ps(1.f));
  for (int h = 0; h < 2; ++h) {
    const __m512 v = _mm512_mul_ps(h == 0 ? lo : hi, inv);
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), half, _CMP_GE_OQ);
    const __m512 away = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(v), sign_bit), one));
    const __m128i q16 = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_mask_add_ps(t, up, t, away)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h), q16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(abs_q + 16 * h), _mm_abs_epi8(q16));
  }
  _mm256_storeu_ps(d8, _mm256_set1_ps(to_float(to_half(d))));
}

}  // namespace

void quantize_activations(Q8DotLevel level, const float* x, int64_t M, int64_t K, Q8Activations& a) {
  a.M = M;
  a.K = K;
  a.stride = (K + 63) / 64 * 64;
  a.q.assign(M * a.stride, 0);
  a.abs_q.assign(M * a.stride, 0);
  a.d8.assign(M * a.stride / kQ8_0Block * 8, 0.f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < a.blocks(); ++b) {
      const float* xb = x + m * K + b * kQ8_0Block;
      int8_t* q = a.q.data() + m * a.stride + b * kQ8_0Block;
      uint8_t* abs_q = a.abs_q.data() + m * a.stride + b * kQ8_0Block;
      float* d8 = a.d8.data() + (m * a.stride / kQ8_0Block + b) * 8;
      if (level == Q8DotLevel::Avx512Vnni)
        quantize_block_avx512(xb, q, abs_q, d8);
      else
        store_block(quantize_q8_0(xb), q, abs_q, d8);
    }
}

namespace {

// ---- AVX512_VNNI: 16 int32 lanes per step = two blocks; a 4 x 4 tile keeps 16 accumulators and
// 4 + 4 weight vectors (values, scales) in 32 registers.

// Blocks b and b + 1 of a weight row in one vector (only b when `both` is false: the high half 0).
LOWSYNC_AVX512_VNNI inline __m512i two_blocks(const BlockQ8_0* w, bool both) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[0].q));
  const __m256i hi = both ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[1].q)) : _mm256_setzero_si256();
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
// Their scales: block b's in lanes 0-7, b + 1's (or 0) in lanes 8-15 (the fp16 values broadcast and
// blended, then converted together).
LOWSYNC_AVX512_VNNI inline __m512 two_scales(const BlockQ8_0* w, bool both) {
  const __m256i lo = _mm256_set1_epi16(int16_t(w[0].d.bits));
  const __m256i hi = both ? _mm256_set1_epi16(int16_t(w[1].d.bits)) : _mm256_setzero_si256();
  return _mm512_cvtph_ps(_mm256_mask_blend_epi16(0xff00, lo, hi));
}

// One step of the tile: blocks b and b + 1 (or b alone, the row's last) of every pair.
template <int MR, int NR, bool kBoth>
LOWSYNC_AVX512_VNNI __attribute__((always_inline)) inline void two_block_step(const Q8Activations& a, int64_t m0,
                                                                              const BlockQ8_0* w, int64_t b,
                                                                              __m512 (&c)[MR][NR]) {
  const int64_t blocks = a.blocks(), d_stride = a.stride / kQ8_0Block * 8;
  __m512i wq[NR];
  __m512 wd[NR];
  for (int j = 0; j < NR; ++j) {
    wq[j] = two_blocks(w + j * blocks + b, kBoth);
    wd[j] = two_scales(w + j * blocks + b, kBoth);
    // The same place kAheadRows rows of w on (an address, not a pointer: it may lie past the
    // matrix). A row is only K / 32 blocks, too short a stream for the hardware prefetcher to
    // learn, so the kernel asks ahead itself: two tiles on in tiles of 4 rows, 16 rows (about 10 KB
    // for SmolLM2) in the one-row tiles of a 1-row product, whose single stream streams fastest so
    // (SmolLM2's products, AMD Zen 5: 8 rows ahead 1.05x slower, 6 rows 1.1x, none 1.25x).
    constexpr int64_t kAheadRows = NR == 1 ? 16 : 2 * NR;
    _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(w + j * blocks + b) +
                                               kAheadRows * blocks * sizeof(BlockQ8_0)),
                 _MM_HINT_T0);
  }
  for (int i = 0; i < MR; ++i) {
    const int64_t at = (m0 + i) * a.stride + b * kQ8_0Block;
    const __mmask64 negative = _mm512_movepi8_mask(_mm512_loadu_si512(a.q.data() + at));
    const __m512i xa = _mm512_loadu_si512(a.abs_q.data() + at);
    const __m512 xd = _mm512_loadu_ps(a.d8.data() + (m0 + i) * d_stride + b * 8);
    for (int j = 0; j < NR; ++j) {
      const __m512i signed_w = _mm512_mask_sub_epi8(wq[j], negative, _mm512_setzero_si512(), wq[j]);
      const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xa, signed_w);  // 4 products a lane
      c[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(xd, wd[j]), c[i][j]);
    }
  }
}

// y[i, j] (+)= q8(x)[m0 + i, :] . w[j, :] for i < MR, j < NR. w: row j's blocks at w + j * blocks.
template <int MR, int NR>
LOWSYNC_AVX512_VNNI void dot_tile_avx512(const Q8Activations& a, int64_t m0, const BlockQ8_0* w, float* y,
                                         int64_t ldy, bool accumulate) {
  const int64_t blocks = a.blocks();
  __m512 c[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_setzero_ps();
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) two_block_step<MR, NR, true>(a, m0, w, b, c);
  if (b < blocks) two_block_step<MR, NR, false>(a, m0, w, b, c);
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float d = _mm512_reduce_add_ps(c[i][j]);
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;
    }
}

// NR rows of w against every row of x: tiles of 4 rows of x, then the 1-3 left.
template <int NR>
void weight_rows_avx512(const Q8Activations& a, const BlockQ8_0* w, float* y, int64_t N, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) dot_tile_avx512<4, NR>(a, m, w, y + m * N, N, accumulate);
  if (a.M - m == 3) dot_tile_avx512<3, NR>(a, m, w, y + m * N, N, accumulate);
  if (a.M - m == 2) dot_tile_avx512<2, NR>(a, m, w, y + m * N, N, accumulate);
  if (a.M - m == 1) dot_tile_avx512<1, NR>(a, m, w, y + m * N, N, accumulate);
}

// ---- AVX-VNNI and AVX2: 8 int32 lanes per step = one block; a 2 x 4 tile keeps 8 accumulators and
// 4 weight vectors in 16 registers. The two differ only in how a block's 32 products reach int32
// lanes, so the tile is written once (a macro: each needs its own target attribute).

LOWSYNC_AVX_VNNI inline __m256i block_sums_avx_vnni(__m256i abs_x, __m256i signed_w) {
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs_x, signed_w);
}
LOWSYNC_AVX2 inline __m256i block_sums_avx2(__m256i abs_x, __m256i signed_w) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(abs_x, signed_w), _mm256_set1_epi16(1));
}
LOWSYNC_AVX2 inline float sum_lanes(__m256 v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

#define LOWSYNC_Q8_DOT_TILE_256(NAME, TARGET, BLOCK_SUMS)                                                        \
  template <int MR, int NR>                                                                                      \
  TARGET void NAME(const Q8Activations& a, int64_t m0, const BlockQ8_0* w, float* y, int64_t ldy,               \
                   bool accumulate) {                                                                            \
    const int64_t blocks = a.blocks(), d_stride = a.stride / kQ8_0Block * 8;                                     \
    __m256 c[MR][NR];                                                                                            \
    for (int i = 0; i < MR; ++i)                                                                                 \
      for (int j = 0; j < NR; ++j) c[i][j] = _mm256_setzero_ps();                                                \
    for (int64_t b = 0; b < blocks; ++b) {                                                                       \
      __m256i wq[NR];                                                                                            \
      float wd[NR];                                                                                              \
      for (int j = 0; j < NR; ++j) {                                                                             \
        wq[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j * blocks + b].q));                       \
        wd[j] = _cvtsh_ss(w[j * blocks + b].d.bits);                                                             \
      }                                                                                                          \
      for (int i = 0; i < MR; ++i) {                                                                             \
        const int64_t at = (m0 + i) * a.stride + b * kQ8_0Block;                                                 \
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q.data() + at));               \
        const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.abs_q.data() + at));           \
        const float xd = a.d8[(m0 + i) * d_stride + b * 8];                                                      \
        for (int j = 0; j < NR; ++j) {                                                                           \
          const __m256i sums = BLOCK_SUMS(xa, _mm256_sign_epi8(wq[j], xq));                                      \
          c[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(xd * wd[j]), c[i][j]);              \
        }                                                                                                        \
      }                                                                                                          \
    }                                                                                                            \
    for (int i = 0; i < MR; ++i)                                                                                 \
      for (int j = 0; j < NR; ++j) {                                                                             \
        const float d = sum_lanes(c[i][j]);                                                                      \
        y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;                                                    \
      }                                                                                                          \
  }

LOWSYNC_Q8_DOT_TILE_256(dot_tile_avx_vnni, LOWSYNC_AVX_VNNI, block_sums_avx_vnni)
LOWSYNC_Q8_DOT_TILE_256(dot_tile_avx2, LOWSYNC_AVX2, block_sums_avx2)
#undef LOWSYNC_Q8_DOT_TILE_256

template <int NR>
void weight_rows_256(Q8DotLevel level, const Q8Activations& a, const BlockQ8_0* w, float* y, int64_t N,
                     bool accumulate) {
  const auto tile = [&](auto mr, int64_t m) {
    constexpr int MR = decltype(mr)::value;
    if (level == Q8DotLevel::AvxVnni)
      dot_tile_avx_vnni<MR, NR>(a, m, w, y + m * N, N, accumulate);
    else
      dot_tile_avx2<MR, NR>(a, m, w, y + m * N, N, accumulate);
  };
  int64_t m = 0;
  for (; m + 2 <= a.M; m += 2) tile(std::integral_constant<int, 2>{}, m);
  if (a.M - m == 1) tile(std::integral_constant<int, 1>{}, m);
}

// ---- Scalar: one dot product at a time, each block's sum in int32.
void weight_row_scalar(const Q8Activations& a, const BlockQ8_0* w, float* y, int64_t N, bool accumulate) {
  const int64_t d_stride = a.stride / kQ8_0Block * 8;
  for (int64_t m = 0; m < a.M; ++m) {
    float d = 0;
    for (int64_t b = 0; b < a.blocks(); ++b) {
      const int8_t* xq = a.q.data() + m * a.stride + b * kQ8_0Block;
      int32_t sum = 0;
      for (int64_t k = 0; k < kQ8_0Block; ++k) sum += int32_t(xq[k]) * int32_t(w[b].q[k]);
      d += float(sum) * (a.d8[m * d_stride + b * 8] * to_float(w[b].d));
    }
    y[m * N] = accumulate ? y[m * N] + d : d;
  }
}

// Output columns [n0, n1) of y: blocks of NR rows of w, then single rows.
template <int NR>
void columns(Q8DotLevel level, const Q8Activations& a, const BlockQ8_0* w, int64_t N, float* y, bool accumulate,
             int64_t n0, int64_t n1) {
  const int64_t blocks = a.blocks();
  int64_t n = n0;
  switch (level) {
    case Q8DotLevel::Avx512Vnni:
      for (; n + NR <= n1; n += NR) weight_rows_avx512<NR>(a, w + n * blocks, y + n, N, accumulate);
      for (; n < n1; ++n) weight_rows_avx512<1>(a, w + n * blocks, y + n, N, accumulate);
      break;
    case Q8DotLevel::AvxVnni:
    case Q8DotLevel::Avx2:
      for (; n + 4 <= n1; n += 4) weight_rows_256<4>(level, a, w + n * blocks, y + n, N, accumulate);
      for (; n < n1; ++n) weight_rows_256<1>(level, a, w + n * blocks, y + n, N, accumulate);
      break;
    case Q8DotLevel::Scalar:
      for (; n < n1; ++n) weight_row_scalar(a, w + n * blocks, y + n, N, accumulate);
      break;
  }
}

}  // namespace

void q8_dot_matmul(Q8DotLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BlockQ8_0* w,
                   int64_t N, float* y, bool accumulate, Q8Activations& scratch) {
  quantize_activations(level, x, M, K, scratch);  // M K roundings beside N K products
  // Thread t: a contiguous slice of whole groups of rows of w (the AVX-512 tiles' NR), as
  // few_rows_matmul splits them. One row of x: one row of w per tile, so that the product reads w
  // as one sequential stream (SmolLM2's products 1.5x faster than in tiles of 4 or 8 rows of w, whose
  // 4 or 8 short streams at once the memory system serves more slowly; AMD Zen 5, CPU time).
  const int64_t group = M == 1 ? 1 : 4;
  const int64_t threads = workers.size(), groups = (N + group - 1) / group;
  const int64_t per = group * ((groups + threads - 1) / threads);
  const Q8Activations& a = scratch;
  workers.run([&](int t) {
    const int64_t n0 = std::min(N, t * per), n1 = std::min(N, n0 + per);
    if (group == 1)
      columns<1>(level, a, w, N, y, accumulate, n0, n1);
    else
      columns<4>(level, a, w, N, y, accumulate, n0, n1);
  });
}

}  // namespace lowsync
