#pragma once
// 16 stored weights as 16 fp32 lanes, for the AVX-512 kernels that widen narrow weights in
// registers (few_rows_matmul) or while packing them (many_rows_matmul): fp32 as it is, bf16 by a
// 16-bit shift, fp16 by F16C. Lanes not in `live` read as 0 (and their memory is not touched).
#include <immintrin.h>

#include "layers/narrow_float.h"

#define LOWSYNC_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))

namespace lowsync {

LOWSYNC_AVX512 inline __m512 load16(const float* w, __mmask16 live = 0xffff) { return _mm512_maskz_loadu_ps(live, w); }
LOWSYNC_AVX512 inline __m512 load16(const BFloat16* w, __mmask16 live = 0xffff) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, w));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
LOWSYNC_AVX512 inline __m512 load16(const Half* w, __mmask16 live = 0xffff) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, w));
}

}  // namespace lowsync
