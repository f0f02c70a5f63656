// The bf16-activation decode product (see the header): x rounded to bf16 once, then, 32 values of k
// per vdpbf16ps, the last partial block of k masked (its lanes read as 0, never as the next row's
// values):
//   one row of x: one row of w at a time, so that the product reads w as one sequential stream,
//     asking for the bytes kAheadBytes on itself (software prefetch);
//   more rows: tiles of MR <= 4 rows of x by 4 rows of w, asking for the next-but-one tile's rows.
#include "layers/bf16_dot_matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/error.h"

namespace lowsync {

bool cpu_has_avx512_bf16() {
  const char* off = std::getenv("LOWSYNC_NO_AVX512_BF16");
  if (off && *off && std::strcmp(off, "0") != 0) {
    if (std::strcmp(off, "1") != 0)
      throw UserError(std::string("LOWSYNC_NO_AVX512_BF16 is '") + off + "'; expected 0 or 1");
    return false;
  }
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

namespace {

#define LOWSYNC_AVX512_BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

// y[i, j] (+)= xb[i, :] . w[j, :] for i < MR, j < NR, each a sum of bf16 pairs in fp32.
template <int MR, int NR>
LOWSYNC_AVX512_BF16 void dot_tile(const BFloat16* xb, int64_t K, const BFloat16* w, float* y, int64_t ldy,
                                  bool accumulate) {
  __m512 c[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) {
      // The same place of the rows two tiles on (an address, not a pointer: it may lie past the
      // matrix). A row is short (K / 32 cache lines), too short a stream for the hardware
      // prefetcher to learn; SmolLM2's products at 8 rows of x (AMD Zen 5, CPU time): none 23.5 ms,
      // one tile ahead 11.1, two 9.3, four 9.5.
      const uintptr_t ahead = reinterpret_cast<uintptr_t>(w + j * K + k) + 2 * NR * K * sizeof(BFloat16);
      _mm_prefetch(reinterpret_cast<const char*>(ahead), _MM_HINT_T0);
      b[j] = (__m512bh)_mm512_loadu_si512(w + j * K + k);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_loadu_si512(xb + i * K + k);
      for (int j = 0; j < NR; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, b[j]);
    }
  }
  if (k < K) {
    const __mmask32 live = (__mmask32(1) << (K - k)) - 1;
    __m512bh b[NR];
    for (int j = 0; j < NR; ++j) b[j] = (__m512bh)_mm512_maskz_loadu_epi16(live, w + j * K + k);
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = (__m512bh)_mm512_maskz_loadu_epi16(live, xb + i * K + k);
      for (int j = 0; j < NR; ++j) c[i][j] = _mm512_dpbf16_ps(c[i][j], a, b[j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float d = _mm512_reduce_add_ps(c[i][j]);
      y[i * ldy + j] = accumulate ? y[i * ldy + j] + d : d;
    }
}

// One row of x by rows [n0, n1) of w: y[n] (+)= xb . w[n, :], one row of w after the other, so
// that w is read as one sequential stream (SmolLM2's products at one row of x 1.15x faster than in
// tiles of 4 rows of w, whose 4 short streams at once the memory system serves more slowly).
// Each step asks for the cache line kAheadBytes further on: the hardware prefetcher alone leaves
// the stream at ~37 GB/s; 2 KB ahead ~38, 4-8 KB ~39.5 (fp32's plain stream: ~41), 12 KB and more
// slower again (AMD Zen 5, CPU time; the distance is in bytes, not rows: SmolLM2's rows are 1152 or
// 3072 bytes). One sum per row, over k in order, as the 4-row tiles and llama.cpp's BF16 products
// (tinyBLAS) sum: the same bits as before this tile (2 or 4 sums of alternate steps ran no faster
// from memory, and moved a greedy path of the peer benchmark off llama.cpp's).
constexpr int64_t kAheadBytes = 6144;
LOWSYNC_AVX512_BF16 void one_row(const BFloat16* xb, int64_t K, const BFloat16* w, float* y, int64_t n0, int64_t n1,
                                 bool accumulate) {
  for (int64_t n = n0; n < n1; ++n) {
    const BFloat16* row = w + n * K;
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(row) + kAheadBytes;  // may lie past the matrix
    __m512 c = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + sizeof(BFloat16) * k), _MM_HINT_T0);
      c = _mm512_dpbf16_ps(c, (__m512bh)_mm512_loadu_si512(xb + k), (__m512bh)_mm512_loadu_si512(row + k));
    }
    if (k < K) {
      const __mmask32 live = (__mmask32(1) << (K - k)) - 1;
      c = _mm512_dpbf16_ps(c, (__m512bh)_mm512_maskz_loadu_epi16(live, xb + k),
                           (__m512bh)_mm512_maskz_loadu_epi16(live, row + k));
    }
    const float d = _mm512_reduce_add_ps(c);
    y[n] = accumulate ? y[n] + d : d;
  }
}

// NR rows of w against every row of x: tiles of 4 rows of x, then the 1-3 left.
template <int NR>
void weight_rows(const BFloat16* xb, int64_t M, int64_t K, const BFloat16* w, float* y, int64_t N, bool accumulate) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) dot_tile<4, NR>(xb + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 3) dot_tile<3, NR>(xb + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 2) dot_tile<2, NR>(xb + m * K, K, w, y + m * N, N, accumulate);
  if (M - m == 1) dot_tile<1, NR>(xb + m * K, K, w, y + m * N, N, accumulate);
}

}  // namespace

void bf16_dot_matmul(bool use_dpbf16, SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K,
                     const BFloat16* w, int64_t N, float* y, bool accumulate, std::vector<BFloat16>& x_bf16) {
  x_bf16.resize(M * K);
  // M K roundings beside N K products (rounding 16 at a time with AVX-512 instead made no measurable
  // difference to SmolLM2's decode products)
  for (int64_t i = 0; i < M * K; ++i) x_bf16[i] = to_bf16(x[i]);
  if (!use_dpbf16) {
    // The same rounded x, widened back (exact), through the fp32-summing kernel; a thread's buffer,
    // kept between calls (this runs for every product of every decode step).
    thread_local std::vector<float> rounded;
    rounded.resize(M * K);
    for (int64_t i = 0; i < M * K; ++i) rounded[i] = to_float(x_bf16[i]);
    few_rows_matmul(level, workers, rounded.data(), M, K, w, N, y, accumulate);
    return;
  }
  // Thread t: a contiguous slice of whole 4-row blocks of w, as few_rows_matmul splits them.
  const int64_t threads = workers.size(), blocks = (N + 3) / 4;
  const int64_t per = 4 * ((blocks + threads - 1) / threads);
  const BFloat16* xb = x_bf16.data();
  workers.run([&](int t) {
    const int64_t n0 = std::min(N, t * per), n1 = std::min(N, n0 + per);
    if (M == 1) return one_row(xb, K, w, y, n0, n1, accumulate);
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) weight_rows<4>(xb, M, K, w + n * K, y + n, N, accumulate);
    for (; n < n1; ++n) weight_rows<1>(xb, M, K, w + n * K, y + n, N, accumulate);
  });
}

}  // namespace lowsync
