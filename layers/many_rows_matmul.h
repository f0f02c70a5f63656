#pragma once
// y = x w^T for many rows of x (prefill passes, and attention over a prompt): lowsync's own AVX-512
// matrix product. OpenBLAS may run its AVX2 kernels on an AVX-512 machine (OPENBLAS_CORETYPE, or a
// build that does not know the CPU), which do half the multiply-adds per instruction; and it has no
// product with 16-bit or q8_0 weights. This kernel widens narrow weights while it packs them, so a
// prefill with bf16, fp16 or q8_0 weights runs at the speed of one with fp32 weights.
//
// The usual register-tile scheme (Goto / BLIS): the product is cut into blocks of kKBlock values
// of k; in each, MR = 14 rows of x (packed k-major) times NR = 32 columns of w (packed k-major,
// widened to fp32) accumulate in 28 AVX-512 registers, one broadcast of x and two loads of w per
// k. Every result element sums its products in k order (one fp32 multiply-add at a time, blocks in
// order), so a row's result depends neither on the other rows nor on the thread count.
//
// One build runs on any x86-64: the kernel is compiled for AVX-512 with target attributes and used
// only where many_rows_matmul_available(); elsewhere callers use OpenBLAS.
#include <cstdint>

#include "layers/narrow_float.h"
#include "layers/q8_0.h"
#include "layers/worker_threads.h"

namespace lowsync {

// Whether this CPU runs the kernel (avx512f, avx512bw, avx512vl, fma, f16c).
bool many_rows_matmul_available();

// y[M, N] = x[M, K] w[N, K]^T, or y += x w^T when accumulate (y holding a bias). Row-major, dense.
// The threads of `workers` take the N output columns a 32-column panel at a time.
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const float* w, int64_t N,
                      float* y, bool accumulate);
// The same with 16-bit weights (`weights.dtype: bf16 | fp16`) or q8_0 blocks (K a multiple of 32),
// widened to fp32 (exactly) as they are packed: the same products and sums as on fp32 weights
// holding those values.
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w, int64_t N,
                      float* y, bool accumulate);
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const Half* w, int64_t N,
                      float* y, bool accumulate);
void many_rows_matmul(WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BlockQ8_0* w, int64_t N,
                      float* y, bool accumulate);

// One thread, strided operands (attention's heads: element (r, c) of a matrix at p[r * ld + c]):
//   y[M, N] = x[M, K] w[N, K]^T   (scores = q k^T)
void matmul_nt(const float* x, int64_t ldx, int64_t M, int64_t K, const float* w, int64_t ldw, int64_t N, float* y,
               int64_t ldy);
//   y[M, N] = x[M, K] v[K, N]     (out = p v)
void matmul_nn(const float* x, int64_t ldx, int64_t M, int64_t K, const float* v, int64_t ldv, int64_t N, float* y,
               int64_t ldy);

}  // namespace lowsync
