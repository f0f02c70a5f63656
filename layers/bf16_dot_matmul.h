#pragma once
// Decode products with bf16 weights and bf16 activations (`weights.bf16_dot: true`): x is rounded
// to bf16 once per product (round to nearest even), and each dot product sums bf16 x bf16 pairs in
// fp32, as llama.cpp's BF16 type and torch's bf16 matmul do. With AVX512_BF16 that is vdpbf16ps:
// 32 products per instruction on weights that stay 16-bit, where the exact path
// (few_rows_matmul) widens every weight to fp32 first and is bound by that work, not by memory.
// The price is the activations' rounding: a relative error of at most 2^-9 per element of x, so a
// product moves by at most about 2^-9 x sum |x w| (measured on SmolLM2's shapes: 4e-4 of it).
//
// One build runs on any x86-64: without AVX512_BF16 the same rounded x goes through the widening
// few-rows kernel (the same products; fp32 sums in another order), so a job's numbers mean the
// same thing on every CPU.
#include <cstdint>
#include <vector>

#include "layers/few_rows_matmul.h"

namespace lowsync {

// Whether this CPU has vdpbf16ps (AVX512_BF16, with avx512f / bw / vl) and may use it: the
// environment variable LOWSYNC_NO_AVX512_BF16=1 answers no on a CPU that has it, so that the
// fallback (the widening kernels on the same rounded x, decode-sized and larger products alike)
// runs and is tested on such a CPU too; 0 or unset: the CPU decides; another value: UserError.
bool cpu_has_avx512_bf16();

// y[M, N] = bf16(x)[M, K] w[N, K]^T, or y += it when accumulate; M <= kFewRows. `use_dpbf16` picks
// vdpbf16ps (only where cpu_has_avx512_bf16()); otherwise the widening kernel at `level`.
// `x_bf16` is scratch for the rounded x, reused between calls.
void bf16_dot_matmul(bool use_dpbf16, SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K,
                     const BFloat16* w, int64_t N, float* y, bool accumulate, std::vector<BFloat16>& x_bf16);

}  // namespace lowsync
