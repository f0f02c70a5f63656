#pragma once
// Products of more than kFewRows rows (prefill passes) with bf16 weights and bf16 activations
// (`weights.bf16_dot: true`; layers/bf16_dot_matmul.h does the decode-sized ones): x is rounded to
// bf16 once per product (to_bf16, round to nearest even: bf16_dot_matmul's rounding), and each dot
// product sums exact bf16 x bf16 products in fp32 with AVX512_BF16's vdpbf16ps, two products per
// fp32 lane per instruction, on weights that stay 16-bit. many_rows_matmul, the exact path, widens
// the weights to fp32 while packing them and does one multiply-add per lane, as llama.cpp's BF16
// prefill does not.
//
// The register tiles of many_rows_matmul (Goto / BLIS), on pairs of k: in each block of kKBlock
// values of k, MR = 14 rows of x times NR = 32 columns of w accumulate in 28 AVX-512 registers, one
// broadcast of x and two loads of w per pair of k. Both operands are packed pair-major: one 32-bit
// word holds the two bf16 values of k and k + 1 of a row (x's rounded, w's as stored), which is
// what vdpbf16ps multiplies lane by lane; an odd K's last word has a zero second half. Every result
// element sums its pairs in k order, blocks in order, so a row's result depends neither on the
// other rows of the product nor on the thread count.
//
// Only where cpu_has_avx512_bf16() (layers/bf16_dot_matmul.h); elsewhere the backend multiplies
// the same rounded x by the widening path, as bf16_dot_matmul does for decode-sized products.
#include <cstdint>

#include "layers/narrow_float.h"
#include "layers/worker_threads.h"

namespace lowsync {

// y[M, N] = bf16(x)[M, K] w[N, K]^T, or y += it when accumulate (y holding a bias). Row-major,
// dense. The threads of `workers` round and pack x's tiles, then take the N output columns a
// 32-column panel at a time.
void many_rows_bf16_dot(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w, int64_t N,
                        float* y, bool accumulate);

}  // namespace lowsync
