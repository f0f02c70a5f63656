// The many-rows bf16 product (see the header). For each block of kKBlock values of k: x's rows are
// rounded to bf16 and packed pair-major in tiles of kMR rows (each tile's kMR words of one pair of
// k side by side), then every 32-column panel of w is packed pair-major (the 32 words of one pair
// of k side by side, zeros past N) and multiplied by every tile of x into its columns of y.
#include "layers/many_rows_bf16_dot.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "layers/transpose_avx512.h"

#define LOWSYNC_AVX512_BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,fma,f16c")))

namespace lowsync {

namespace {

constexpr int kMR = 14;           // rows of x per register tile: 28 accumulators + 2 of w + 1 of x
constexpr int kNR = 32;           // columns of y per tile (two vectors of 16)
// values of k per block (even: only the last block has an odd end). A packed panel of w is 48 KB, in
// L1 or L2 (streamed in order); measured on Zen 5 with one SmolLM2 layer's prefill products
// (bench_prefill_products), 768 ran ~10% faster than 256 (fewer, longer passes over each tile).
constexpr int64_t kKBlock = 768;

// The word of a pair of bf16 values: `first` (k) in the low half, as vdpbf16ps pairs its lanes.
inline uint32_t pair_word(BFloat16 first, BFloat16 second) { return uint32_t(first.bits) | uint32_t(second.bits) << 16; }

// c[i, 0:32] (+)= a_i . b over one block of k: a pair-major [pairs][MR] (a tile of packed x), b
// pair-major [pairs][32] (a packed panel of w). live0 / live1: the columns of c that exist.
template <int MR>
LOWSYNC_AVX512_BF16 void tile(const uint32_t* a, const uint32_t* b, int64_t pairs, float* c, int64_t ldc,
                              __mmask16 live0, __mmask16 live1, bool load_c) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    c0[i] = load_c ? _mm512_maskz_loadu_ps(live0, c + i * ldc) : _mm512_setzero_ps();
    c1[i] = load_c ? _mm512_maskz_loadu_ps(live1, c + i * ldc + 16) : _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p, a += MR, b += kNR) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(int(a[i]));  // x[i][k], x[i][k + 1] in every lane
      c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, live0, c0[i]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, live1, c1[i]);
  }
}

using TileFn = void (*)(const uint32_t*, const uint32_t*, int64_t, float*, int64_t, __mmask16, __mmask16, bool);
template <int... R>
constexpr std::array<TileFn, sizeof...(R)> tile_table(std::integer_sequence<int, R...>) {
  return {&tile<R + 1>...};
}
// tiles[mr - 1]: the tile of mr rows (the last tile of x may have fewer than kMR).
constexpr auto tiles = tile_table(std::make_integer_sequence<int, kMR>{});

// 16 values of x rounded to bf16 as to_bf16 rounds (add 0x7fff plus the kept part's lowest bit,
// keep the top 16 bits), in order.
LOWSYNC_AVX512_BF16 inline __m256i round16(const float* x) {
  const __m512i u = _mm512_castps_si512(_mm512_loadu_ps(x));
  const __m512i lowest_kept = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lowest_kept));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

// 32 values of x rounded to bf16 as their 16 pair words, in order.
LOWSYNC_AVX512_BF16 inline __m512 round32_pairs(const float* x) {
  return _mm512_castsi512_ps(_mm512_inserti64x4(_mm512_castsi256_si512(round16(x)), round16(x + 16), 1));
}

// x[M, k0 : k0 + kc] rounded and packed: tile t (rows m0 .. m0 + mr) at a + m0 * pairs, word
// (i, p) at p * mr + i. Tiles [t0, t1) of them. A tile's whole 32-value stretches of k go 16
// words of each row at a time through a 16 x 16 transpose in registers (rows mr .. 15 zero, their
// lanes not stored); the rest word by word.
LOWSYNC_AVX512_BF16 void pack_x(const float* x, int64_t M, int64_t K, int64_t k0, int64_t kc, uint32_t* a, int64_t t0,
                                int64_t t1) {
  const int64_t pairs = (kc + 1) / 2, by_blocks = kc / 32 * 32;
  __m512 r[16];
  for (int64_t m0 = t0 * kMR; m0 < std::min(M, t1 * kMR); m0 += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, M - m0);
    const __mmask16 rows = __mmask16((1u << mr) - 1);
    uint32_t* t = a + m0 * pairs;
    const float* x0 = x + m0 * K + k0;
    for (int64_t k = 0; k < by_blocks; k += 32) {
      for (int i = 0; i < 16; ++i) r[i] = i < mr ? round32_pairs(x0 + i * K + k) : _mm512_setzero_ps();
      transpose16(r);  // r[j]: word k / 2 + j of rows 0 .. 15
      for (int j = 0; j < 16; ++j) _mm512_mask_storeu_epi32(t + (k / 2 + j) * mr, rows, _mm512_castps_si512(r[j]));
    }
    for (int64_t k = by_blocks; k < kc; k += 2)
      for (int64_t i = 0; i < mr; ++i) {
        const float* v = x0 + i * K + k;
        t[k / 2 * mr + i] = pair_word(to_bf16(v[0]), k + 1 < kc ? to_bf16(v[1]) : BFloat16{0});
      }
  }
}

// Panel [n0, n0 + nr) of w's block (w[N, K], k in [k0, k0 + kc)) packed pair-major: word (p, j)
// at b[p * 32 + j] holds w[n0 + j][k0 + 2p] and w[n0 + j][k0 + 2p + 1] (0 past kc); columns
// nr .. 31 zero. A full panel's whole 32-value stretches of k go 16 x 16 words at a time through
// a transpose in registers (a row's 32 bf16 are its 16 words as stored); the rest word by word.
LOWSYNC_AVX512_BF16 void pack_w(const BFloat16* w, int64_t K, int64_t n0, int64_t nr, int64_t k0, int64_t kc,
                                uint32_t* b) {
  const int64_t by_blocks = nr == kNR ? kc / 32 * 32 : 0;
  __m512 r[16];
  for (int64_t j0 = 0; j0 < kNR && by_blocks > 0; j0 += 16)
    for (int64_t k = 0; k < by_blocks; k += 32) {
      for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(_mm512_loadu_si512(w + (n0 + j0 + i) * K + k0 + k));
      transpose16(r);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(b + (k / 2 + i) * kNR + j0, _mm512_castps_si512(r[i]));
    }
  for (int64_t k = by_blocks; k < kc; k += 2)
    for (int64_t j = 0; j < kNR; ++j) {
      if (j >= nr) {
        b[k / 2 * kNR + j] = 0;
        continue;
      }
      const BFloat16* v = w + (n0 + j) * K + k0 + k;
      b[k / 2 * kNR + j] = pair_word(v[0], k + 1 < kc ? v[1] : BFloat16{0});
    }
}

}  // namespace

void many_rows_bf16_dot(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w, int64_t N,
                        float* y, bool accumulate) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum
    if (!accumulate) std::fill(y, y + M * N, 0.f);
    return;
  }
  thread_local std::vector<uint32_t> packed_x;  // the caller's; workers see it through `a`
  packed_x.resize(M * ((std::min(K, kKBlock) + 1) / 2));
  uint32_t* const a = packed_x.data();
  const int threads = workers.size();
  const int64_t n_panels = (N + kNR - 1) / kNR, n_tiles = (M + kMR - 1) / kMR;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kc = std::min(kKBlock, K - k0), pairs = (kc + 1) / 2;
    workers.run([&](int t) {  // the threads round and pack x's tiles, then multiply their panels
      pack_x(x, M, K, k0, kc, a, n_tiles * t / threads, n_tiles * (t + 1) / threads);
    });
    const bool load_c = accumulate || k0 > 0;
    workers.run_items(n_panels, [&](int64_t p) {  // panels to whichever thread asks next
      thread_local std::vector<uint32_t> b;          // a packed panel of w
      b.resize(kKBlock / 2 * kNR);
      const int64_t n0 = p * kNR, nr = std::min<int64_t>(kNR, N - n0);
      pack_w(w, K, n0, nr, k0, kc, b.data());
      const __mmask16 live0 = nr >= 16 ? 0xffff : __mmask16((1u << nr) - 1);
      const __mmask16 live1 = nr >= 32 ? 0xffff : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : 0;
      for (int64_t m0 = 0; m0 < M; m0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, M - m0);
        tiles[mr - 1](a + m0 * pairs, b.data(), pairs, y + m0 * N + n0, N, live0, live1, load_c);
      }
    });
  }
}

}  // namespace lowsync
