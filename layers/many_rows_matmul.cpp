// The many-rows matmul (see the header). For each block of kKBlock values of k: x's rows are
// packed k-major in tiles of kMR rows (each tile's kMR values of one k side by side), then every
// 32-column panel of w is packed k-major (the 32 values of one k side by side, widened to fp32,
// zeros past N) and multiplied by every tile of x into its columns of y.
#include "layers/many_rows_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#include "layers/transpose_avx512.h"
#include "layers/widen_avx512.h"

namespace lowsync {

bool many_rows_matmul_available() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

namespace {

constexpr int kMR = 14;           // rows of x per register tile: 28 accumulators + 2 of w + 1 of x
constexpr int kNR = 32;           // columns of y per tile (two vectors of 16)
// values of k per block: a packed panel of w is 72 KB, in L2 (streamed in order: prefetched well);
// measured on Zen 5 (48 KB L1, 1 MB L2) with one SmolLM2 layer's prefill products
// (bench_prefill_products), 576 ran 5-10% faster than 256 at 64, 512 and 1024 rows, as fast as 768.
constexpr int64_t kKBlock = 576;

// c[i, 0:32] (+)= a_i . b over one block of k: a k-major [kc][MR] (a tile of packed x), b k-major
// [kc][32] (a packed panel of w). live0 / live1: the columns of c that exist (a ragged last panel).
template <int MR>
LOWSYNC_AVX512 void tile(const float* a, const float* b, int64_t kc, float* c, int64_t ldc, __mmask16 live0,
                         __mmask16 live1, bool load_c) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = load_c ? _mm512_maskz_loadu_ps(live0, c + i * ldc) : _mm512_setzero_ps();
    c1[i] = load_c ? _mm512_maskz_loadu_ps(live1, c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k, a += MR, b += kNR) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, live0, c0[i]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, live1, c1[i]);
  }
}

using TileFn = void (*)(const float*, const float*, int64_t, float*, int64_t, __mmask16, __mmask16, bool);
template <int... R>
constexpr std::array<TileFn, sizeof...(R)> tile_table(std::integer_sequence<int, R...>) {
  return {&tile<R + 1>...};
}
// tiles[mr - 1]: the tile of mr rows (the last tile of x may have fewer than kMR).
constexpr auto tiles = tile_table(std::make_integer_sequence<int, kMR>{});

// x[M, k0 : k0 + kc] packed: tile t (rows m0 .. m0 + mr) at a + m0 * kc, element (i, k) at k * mr + i.
// Tiles [t0, t1) of them. Whole stretches of 16 values of k go through a transpose in registers
// (the tile's rows, padded to 16, in; 16 values of k, each with its mr rows side by side, out);
// the rest value by value.
LOWSYNC_AVX512 void pack_x(const float* x, int64_t ldx, int64_t M, int64_t k0, int64_t kc, float* a, int64_t t0,
                           int64_t t1) {
  const int64_t by_blocks = kc / 16 * 16;
  __m512 r[16];
  for (int64_t m0 = t0 * kMR; m0 < std::min(M, t1 * kMR); m0 += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, M - m0);
    const __mmask16 rows = __mmask16((1u << mr) - 1);
    float* t = a + m0 * kc;
    const float* x0 = x + m0 * ldx + k0;
    for (int64_t k = 0; k < by_blocks; k += 16) {
      for (int i = 0; i < 16; ++i) r[i] = i < mr ? _mm512_loadu_ps(x0 + i * ldx + k) : _mm512_setzero_ps();
      transpose16(r);  // r[j]: value k + j of rows 0 .. 15
      for (int j = 0; j < 16; ++j) _mm512_mask_storeu_ps(t + (k + j) * mr, rows, r[j]);
    }
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t k = by_blocks; k < kc; ++k) t[k * mr + i] = x0[i * ldx + k];
  }
}

// One row of w's block, [k0, k0 + kc), as fp32.
LOWSYNC_AVX512 void widen_row(const float* w, int64_t kc, float* out) { std::copy(w, w + kc, out); }
LOWSYNC_AVX512 void widen_row(const BFloat16* w, int64_t kc, float* out) {
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k)));
    _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
  }
  for (; k < kc; ++k) out[k] = to_float(w[k]);
}
LOWSYNC_AVX512 void widen_row(const Half* w, int64_t kc, float* out) {
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16)
    _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k))));
  for (; k < kc; ++k) out[k] = to_float(w[k]);
}
LOWSYNC_AVX512 void widen_row(Q8_0Ptr w, int64_t kc, float* out) {  // w.at and kc: whole blocks
  for (int64_t k = 0; k < kc; k += kQ8_0Block) {
    const BlockQ8_0& b = (w + k).block();
    const float d = to_float(b.d);
    for (int64_t i = 0; i < kQ8_0Block; ++i) out[k + i] = float(b.q[i]) * d;
  }
}

// A whole panel (32 rows of w, kc a multiple of 16) by 16 x 16 blocks transposed in registers.
template <typename W>
LOWSYNC_AVX512 void pack_w_rows_by_blocks(const W* w, int64_t ldw, int64_t k0, int64_t kc, float* b) {
  __m512 r[16];
  for (int64_t j0 = 0; j0 < kNR; j0 += 16)
    for (int64_t k = 0; k < kc; k += 16) {
      for (int i = 0; i < 16; ++i) r[i] = load16(w + (j0 + i) * ldw + k0 + k);
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_ps(b + (k + i) * kNR + j0, r[i]);
    }
}

// Panel [n0, n0 + nr) of w^T's block (w[N, K] with rows ldw apart, k in [k0, k0 + kc)), k-major:
// element (k, j) at b[k * 32 + j]; columns nr .. 31 zero.
template <typename W>
void pack_w_rows(W w, int64_t ldw, int64_t n0, int64_t nr, int64_t k0, int64_t kc, float* b, float* row) {
  if constexpr (!std::is_same_v<W, Q8_0Ptr>)
    if (nr == kNR && kc % 16 == 0) return pack_w_rows_by_blocks(w + n0 * ldw, ldw, k0, kc, b);
  for (int64_t j = 0; j < kNR; ++j) {
    if (j < nr)
      widen_row(w + (n0 + j) * ldw + k0, kc, row);
    else
      std::fill(row, row + kc, 0.f);
    for (int64_t k = 0; k < kc; ++k) b[k * kNR + j] = row[k];
  }
}

// The same panel of v[K, N] itself (rows ldv apart): element (k, j) = v[k0 + k, n0 + j].
void pack_v_columns(const float* v, int64_t ldv, int64_t n0, int64_t nr, int64_t k0, int64_t kc, float* b) {
  for (int64_t k = 0; k < kc; ++k) {
    const float* src = v + (k0 + k) * ldv + n0;
    std::copy(src, src + nr, b + k * kNR);
    std::fill(b + k * kNR + nr, b + (k + 1) * kNR, 0.f);
  }
}

// Columns [n_begin, n_end) of y (n_begin a multiple of 32) for one block of k: each panel packed,
// then multiplied by every tile of the packed x.
template <typename PackPanel>
void panels(const float* a, int64_t M, int64_t kc, int64_t n_begin, int64_t n_end, float* y, int64_t ldy,
            bool load_c, PackPanel pack) {
  thread_local std::vector<float> b;
  b.resize(kKBlock * kNR);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNR) {
    const int64_t nr = std::min<int64_t>(kNR, n_end - n0);
    pack(n0, nr, b.data());
    const __mmask16 live0 = nr >= 16 ? 0xffff : __mmask16((1u << nr) - 1);
    const __mmask16 live1 = nr >= 32 ? 0xffff : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
    for (int64_t m0 = 0; m0 < M; m0 += kMR) {
      const int64_t mr = std::min<int64_t>(kMR, M - m0);
      tiles[mr - 1](a + m0 * kc, b.data(), kc, y + m0 * ldy + n0, ldy, live0, live1, load_c);
    }
  }
}

// y[M, N] (+)= x w^T over `workers` (taking panels of 32 columns one at a time), or on the calling
// thread when workers is null. pack(n0, nr, k0, kc, b): a panel of the right-hand matrix.
template <typename PackPanel>
void product(WorkerThreads* workers, const float* x, int64_t ldx, int64_t M, int64_t K, int64_t N, float* y,
             int64_t ldy, bool accumulate, PackPanel pack) {
  if (M == 0 || N == 0) return;
  thread_local std::vector<float> packed_x;  // the caller's; workers see it through `a`
  packed_x.resize(M * std::min(K, kKBlock));
  float* const a = packed_x.data();
  if (K == 0) {  // an empty sum
    if (!accumulate)
      for (int64_t m = 0; m < M; ++m) std::fill(y + m * ldy, y + m * ldy + N, 0.f);
    return;
  }
  // f(t, threads) for every thread t of `workers`, or f(0, 1) on this one.
  auto on_threads = [&](auto f) {
    if (workers && workers->size() > 1)
      workers->run([&](int t) { f(t, workers->size()); });
    else
      f(0, 1);
  };
  const int64_t n_panels = (N + kNR - 1) / kNR, n_tiles = (M + kMR - 1) / kMR;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kc = std::min(kKBlock, K - k0);
    on_threads([&](int t, int threads) {  // the threads pack x's tiles
      pack_x(x, ldx, M, k0, kc, a, n_tiles * t / threads, n_tiles * (t + 1) / threads);
    });
    const bool load_c = accumulate || k0 > 0;
    auto panel = [&](int64_t p) {  // panels go to whichever thread asks next (WorkerThreads::run_items)
      panels(a, M, kc, p * kNR, std::min(N, (p + 1) * kNR), y, ldy, load_c,
             [&](int64_t n0, int64_t nr, float* b) { pack(n0, nr, k0, kc, b); });
    };
    if (workers && workers->size() > 1)
      workers->run_items(n_panels, panel);
    else
      for (int64_t p = 0; p < n_panels; ++p) panel(p);
  }
}

template <typename W>
void weights_product(WorkerThreads& workers, const float* x, int64_t M, int64_t K, W w, int64_t N, float* y,
                     bool accumulate) {
  product(&workers, x, K, M, K, N, y, N, accumulate, [&](int64_t n0, int64_t nr, int64_t k0, int64_t kc, float* b) {
    thread_local std::vector<float> row;
    row.resize(kKBlock);
    pack_w_rows(w, K, n0, nr, k0, kc, b, row.data());
  });
}

}  // namespace

void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                      float* y, bool accumulate) {
  weights_product(workers, x, M, K, w, N, y, accumulate);
}
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w, int64_t N,
                      float* y, bool accumulate) {
  weights_product(workers, x, M, K, w, N, y, accumulate);
}
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const Half* w, int64_t N,
                      float* y, bool accumulate) {
  weights_product(workers, x, M, K, w, N, y, accumulate);
}
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BlockQ8_0* w, int64_t N,
                      float* y, bool accumulate) {
  weights_product(workers, x, M, K, Q8_0Ptr{w}, N, y, accumulate);
}

void matmul_nt(const float* x, int64_t ldx, int64_t M, int64_t K, const float* w, int64_t ldw, int64_t N, float* y,
               int64_t ldy) {
  product(nullptr, x, ldx, M, K, N, y, ldy, false, [&](int64_t n0, int64_t nr, int64_t k0, int64_t kc, float* b) {
    thread_local std::vector<float> row;
    row.resize(kKBlock);
    pack_w_rows(w, ldw, n0, nr, k0, kc, b, row.data());
  });
}

void matmul_nn(const float* x, int64_t ldx, int64_t M, int64_t K, const float* v, int64_t ldv, int64_t N, float* y,
               int64_t ldy) {
  product(nullptr, x, ldx, M, K, N, y, ldy, false, [&](int64_t n0, int64_t nr, int64_t k0, int64_t kc, float* b) {
    pack_v_columns(v, ldv, n0, nr, k0, kc, b);
  });
}

}  // namespace lowsync
