// The few-rows matmul (see the header): one register tile of MR rows of x by NR rows of w at a
// time, accumulating SIMD-wide partial dot products over k and reducing them at the end. The
// AVX-512 and AVX2 versions are the same loops at 16 and 8 lanes; the scalar one is the plain
// triple loop, for CPUs with neither. Every loop is a template over the weights' pointer type W
// (float*, BFloat16*, Half*, Q8_0Ptr): a narrow weight is widened to fp32 in registers as it is
// loaded (bf16: a 16-bit shift; half: the F16C conversion; q8_0: int8 to fp32 times the block's
// scale), then multiplied in fp32 like a float weight.
#include "layers/few_rows_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <type_traits>

#include "layers/widen_avx512.h"

namespace lowsync {

bool cpu_runs(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case SimdLevel::Scalar: return true;
  }
  return false;
}

SimdLevel best_simd_level() {
  for (SimdLevel l : {SimdLevel::Avx512, SimdLevel::Avx2})
    if (cpu_runs(l)) return l;
  return SimdLevel::Scalar;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    case SimdLevel::Scalar: return "scalar";
  }
  return "?";
}

namespace {

#define LOWSYNC_AVX2 __attribute__((target("avx2,fma,f16c")))

// ---- AVX-512: 16 lanes; a 4 x 4 tile keeps 16 accumulators + 4 weight vectors in 32 registers.

// y[i, j] (+)= the sum of c[i][j]'s lanes, for a finished tile's accumulators.
template <int MR, int NR>
LOWSYNC_AVX512 __attribute__((always_inline)) inline void store_tile(__m512 (&c)[MR][NR], float* y, int64_t ldy,
                                                                 bool accumulate) {
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) {
      const float d = _mm512_reduce_add_ps(c[i][j]);
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;
    }
}

// y[i, j] (+)= x[i, :] . w[j, :] for i < MR, j < NR: 16 values of k of every dot product at a time,
// then the last 1-15 (the other lanes read as 0). Both steps are written out here, their loops
// unrolled, so that each c[i][j] is a register: given to a step function by reference, or indexed
// at run time, GCC 12 keeps the tile in memory and stores all of it at every step of k (4-row
// tiles ran 1.3x slower). A mask computed in the main loop instead slows 1-row products 1.4x.
// In tiles of 2 or more rows of x, each step also asks for the same values of the next tile's
// rows of w (software prefetch, one tile ahead: SmolLM2's decode products at 8 rows of x 1.7x
// faster; bf16 1.35x). A 1-row tile does not: it streams w as fast as a plain read of the same
// bytes, and the extra requests only compete with the hardware prefetcher's (SmolLM2's fp32
// products at 1 row of x, AMD Zen 5: 1.14x faster without; at 2 rows 1.05x slower without, at
// 3 rows 1.25x slower). Where a batch leaves a 1-row tile after 4-row ones, their prefetches
// have already brought its rows.
template <int MR, typename W>
constexpr bool kPrefetch = MR > 1 || !std::is_same_v<W, const float*>;

// 16 weights of a full step as fp32, by plain loads: load16's masked load of all 16 lanes made GCC
// walk the tile's rows of w out of order with extra address arithmetic (the 1-row fp32 tile 1.13x
// slower, on SmolLM2's products on AMD Zen 5).
LOWSYNC_AVX512 inline __m512 load16_whole(const float* w) { return _mm512_loadu_ps(w); }
LOWSYNC_AVX512 inline __m512 load16_whole(const BFloat16* w) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
LOWSYNC_AVX512 inline __m512 load16_whole(const Half* w) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
}

template <int MR, int NR, typename W>
LOWSYNC_AVX512 void dot_tile_avx512(const float* x, int64_t K, W w, float* y, int64_t ldy, bool accumulate) {
  __m512 c[MR][NR], b[NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) {
      if constexpr (kPrefetch<MR, W>) _mm_prefetch(reinterpret_cast<const char*>(w + (j + NR) * K + k), _MM_HINT_T0);
      b[j] = load16_whole(w + j * K + k);
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_loadu_ps(x + i * K + k);
#pragma GCC unroll 32
      for (int j = 0; j < NR; ++j) c[i][j] = _mm512_fmadd_ps(a, b[j], c[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 live = __mmask16((1u << (K - k)) - 1);
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) b[j] = load16(w + j * K + k, live);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_maskz_loadu_ps(live, x + i * K + k);
#pragma GCC unroll 32
      for (int j = 0; j < NR; ++j) c[i][j] = _mm512_fmadd_ps(a, b[j], c[i][j]);
    }
  }
  store_tile<MR, NR>(c, y, ldy, accumulate);
}

// The tile for Q8_0 rows, a block (32 values) per step: each row's block scale is converted once
// (by F16C) and its 32 int8 widened and scaled into two vectors, shared by the MR rows of x. Each
// dot product runs over k in order, 16 lanes at a time, as the generic tile's do. w: the first
// block of the tile's first row (rows are K / 32 blocks apart). Loops unrolled: see dot_tile_avx512.
template <int MR, int NR>
LOWSYNC_AVX512 void dot_tile_q8_0_avx512(const float* x, int64_t K, const BlockQ8_0* w, float* y, int64_t ldy,
                                         bool accumulate) {
  const int64_t blocks = K / kQ8_0Block;
  __m512 c[MR][NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_setzero_ps();
  for (int64_t blk = 0; blk < blocks; ++blk) {
    __m512 lo[NR], hi[NR];
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) {
      const BlockQ8_0& b = w[j * blocks + blk];
      const __m512 d = _mm512_set1_ps(_cvtsh_ss(b.d.bits));
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.q));
      lo[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), d);
      hi[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), d);
    }
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const __m512 a0 = _mm512_loadu_ps(x + i * K + blk * kQ8_0Block);
      const __m512 a1 = _mm512_loadu_ps(x + i * K + blk * kQ8_0Block + 16);
#pragma GCC unroll 32
      for (int j = 0; j < NR; ++j) c[i][j] = _mm512_fmadd_ps(a1, hi[j], _mm512_fmadd_ps(a0, lo[j], c[i][j]));
    }
  }
  store_tile<MR, NR>(c, y, ldy, accumulate);
}

// NR rows of w against every row of x: tiles of 4 rows of x, then the 1-3 left.
template <int NR, typename W>
void weight_rows_avx512(const float* x, int64_t M, int64_t K, W w, float* y, int64_t N, bool accumulate) {
  if constexpr (std::is_same_v<W, Q8_0Ptr>) {
    const BlockQ8_0* b = w.blocks + w.at / kQ8_0Block;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) dot_tile_q8_0_avx512<4, NR>(x + m * K, K, b, y + m * N, N, accumulate);
    if (M - m == 3) dot_tile_q8_0_avx512<3, NR>(x + m * K, K, b, y + m * N, N, accumulate);
    if (M - m == 2) dot_tile_q8_0_avx512<2, NR>(x + m * K, K, b, y + m * N, N, accumulate);
    if (M - m == 1) dot_tile_q8_0_avx512<1, NR>(x + m * K, K, b, y + m * N, N, accumulate);
  } else {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) dot_tile_avx512<4, NR>(x + m * K, K, w, y + m * N, N, accumulate);
    if (M - m == 3) dot_tile_avx512<3, NR>(x + m * K, K, w, y + m * N, N, accumulate);
    if (M - m == 2) dot_tile_avx512<2, NR>(x + m * K, K, w, y + m * N, N, accumulate);
    if (M - m == 1) dot_tile_avx512<1, NR>(x + m * K, K, w, y + m * N, N, accumulate);
  }
}

// ---- AVX2: 8 lanes, 16 registers; a 2 x 4 tile keeps 8 accumulators + 4 weight vectors.

// Lane i of the mask is live when i < n (maskload reads the top bit of each 32-bit lane).
LOWSYNC_AVX2 inline __m256i first_lanes(int64_t n) {
  alignas(32) static const int32_t table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + 8 - n));
}

LOWSYNC_AVX2 inline float sum_lanes(__m256 v) {
  const __m128 four = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
  return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}

// 8 weights as fp32.
LOWSYNC_AVX2 inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
LOWSYNC_AVX2 inline __m256 load8(const BFloat16* w) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
LOWSYNC_AVX2 inline __m256 load8(const Half* w) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}
// The last n < 8 weights of a row, the other lanes 0: fp32 with a masked load; a narrow type has
// no masked 16-bit load in AVX2, so its few values go through a zeroed buffer.
LOWSYNC_AVX2 inline __m256 load8_tail(const float* w, int64_t, __m256i live) { return _mm256_maskload_ps(w, live); }
template <typename W>
LOWSYNC_AVX2 inline __m256 load8_tail(const W* w, int64_t n, __m256i) {
  W buf[8] = {};
  std::copy(w, w + n, buf);
  return load8(buf);
}
// Q8_0: 8 values of one block, scaled (a row's length is whole blocks, so there is no tail).
LOWSYNC_AVX2 inline __m256 load8(Q8_0Ptr w) {
  const BlockQ8_0& b = w.block();
  const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.q + w.at % kQ8_0Block)));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(_cvtsh_ss(b.d.bits)));
}
LOWSYNC_AVX2 inline __m256 load8_tail(Q8_0Ptr w, int64_t n, __m256i) {
  alignas(32) float buf[8] = {};
  for (int64_t i = 0; i < n; ++i) buf[i] = w[i];
  return _mm256_load_ps(buf);
}

template <int MR, int NR, typename W>
LOWSYNC_AVX2 __attribute__((always_inline)) inline void dot_step_avx2(const float* x, int64_t K, W w,
                                                                      __m256 (&c)[MR][NR]) {
  __m256 b[NR];
#pragma GCC unroll 32
  for (int j = 0; j < NR; ++j) b[j] = load8(w + j * K);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    const __m256 a = _mm256_loadu_ps(x + i * K);
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) c[i][j] = _mm256_fmadd_ps(a, b[j], c[i][j]);
  }
}

template <int MR, int NR, typename W>
LOWSYNC_AVX2 __attribute__((always_inline)) inline void dot_tail_avx2(const float* x, int64_t K, W w,
                                                                      __m256 (&c)[MR][NR], int64_t n) {
  const __m256i live = first_lanes(n);
  __m256 b[NR];
#pragma GCC unroll 32
  for (int j = 0; j < NR; ++j) b[j] = load8_tail(w + j * K, n, live);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    const __m256 a = _mm256_maskload_ps(x + i * K, live);
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) c[i][j] = _mm256_fmadd_ps(a, b[j], c[i][j]);
  }
}

// Loops unrolled (the steps' too), so that the tile stays in registers: see dot_tile_avx512.
template <int MR, int NR, typename W>
LOWSYNC_AVX2 void dot_tile_avx2(const float* x, int64_t K, W w, float* y, int64_t ldy, bool accumulate) {
  __m256 c[MR][NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) c[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) dot_step_avx2<MR, NR>(x + k, K, w + k, c);
  if (k < K) dot_tail_avx2<MR, NR>(x + k, K, w + k, c, K - k);
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 32
    for (int j = 0; j < NR; ++j) {
      const float d = sum_lanes(c[i][j]);
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;
    }
}

template <int NR, typename W>
void weight_rows_avx2(const float* x, int64_t M, int64_t K, W w, float* y, int64_t N, bool accumulate) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) dot_tile_avx2<2, NR>(x + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 1) dot_tile_avx2<1, NR>(x + m * K, K, w, y + m * N, N, accumulate);
}

// ---- Scalar: one dot product at a time.
template <typename W>
void weight_row_scalar(const float* x, int64_t M, int64_t K, W w, float* y, int64_t N, bool accumulate) {
  for (int64_t m = 0; m < M; ++m) {
    float d = 0;
    for (int64_t k = 0; k < K; ++k) d += x[m * K + k] * to_float(w[k]);  // Q8_0Ptr's [] dequantises
    y[m * N] = accumulate ? y[m * N] + d : d;
  }
}

// Output columns [n0, n1) of y: blocks of 4 rows of w, then single rows.
template <typename W>
void columns(SimdLevel level, const float* x, int64_t M, int64_t K, W w, int64_t N, float* y, bool accumulate,
             int64_t n0, int64_t n1) {
  int64_t n = n0;
  switch (level) {
    case SimdLevel::Avx512:
      // q8_0 at one or two rows of x: 8 rows of w per tile, so that enough independent accumulators
      // hide the FMA latency of its two products per block (each dot product's order is the same).
      if constexpr (std::is_same_v<W, Q8_0Ptr>)
        if (M <= 2)
          for (; n + 8 <= n1; n += 8) weight_rows_avx512<8>(x, M, K, w + n * K, y + n, N, accumulate);
      for (; n + 4 <= n1; n += 4) weight_rows_avx512<4>(x, M, K, w + n * K, y + n, N, accumulate);
      for (; n < n1; ++n) weight_rows_avx512<1>(x, M, K, w + n * K, y + n, N, accumulate);
      break;
    case SimdLevel::Avx2:
      for (; n + 4 <= n1; n += 4) weight_rows_avx2<4>(x, M, K, w + n * K, y + n, N, accumulate);
      for (; n < n1; ++n) weight_rows_avx2<1>(x, M, K, w + n * K, y + n, N, accumulate);
      break;
    case SimdLevel::Scalar:
      for (; n < n1; ++n) weight_row_scalar(x, M, K, w + n * K, y + n, N, accumulate);
      break;
  }
}

template <typename W>
void split_over_threads(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, W w,
                        int64_t N, float* y, bool accumulate) {
  // Thread t computes columns [t * per, (t + 1) * per): a contiguous slice of w (each weight is
  // still read once), whole 4-row blocks so that only the last slice has a ragged end.
  const int64_t threads = workers.size(), blocks = (N + 3) / 4;
  const int64_t per = 4 * ((blocks + threads - 1) / threads);
  workers.run([&](int t) {
    const int64_t n0 = std::min(N, t * per), n1 = std::min(N, n0 + per);
    columns(level, x, M, K, w, N, y, accumulate, n0, n1);
  });
}

}  // namespace

void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const float* w,
                     int64_t N, float* y, bool accumulate) {
  split_over_threads(level, workers, x, M, K, w, N, y, accumulate);
}
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w,
                     int64_t N, float* y, bool accumulate) {
  split_over_threads(level, workers, x, M, K, w, N, y, accumulate);
}
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const Half* w,
                     int64_t N, float* y, bool accumulate) {
  split_over_threads(level, workers, x, M, K, w, N, y, accumulate);
}
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K,
                     const BlockQ8_0* w, int64_t N, float* y, bool accumulate) {
  split_over_threads(level, workers, x, M, K, Q8_0Ptr{w}, N, y, accumulate);
}

}  // namespace lowsync
