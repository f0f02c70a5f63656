#pragma once
// y = x w^T for a few rows of x (decode steps), reading every weight from memory once for all rows.
// OpenBLAS's sgemm streams w at a fraction of memory speed when x has few rows (it packs w for
// large M), and sgemv handles one row only; a decode step of a batch is M = 1..32 rows, so it gets
// its own kernel: each block of 4 rows of w is read once and multiplied by every row of x (which
// stays in cache).
//
// One build runs on any x86-64: the vector code is compiled per instruction set with target
// attributes and picked at run time (best_simd_level). Each dot product runs over k in the same
// order whatever M and the thread count are, so a row's result depends neither on the other rows
// of its batch nor on the thread count.
#include <cstdint>

#include "layers/narrow_float.h"
#include "layers/q8_0.h"
#include "layers/worker_threads.h"

namespace lowsync {

enum class SimdLevel { Scalar, Avx2, Avx512 };

// The best level this CPU runs: AVX-512 (avx512f, bw, vl + fma + f16c), AVX2 (avx2 + fma + f16c) or
// scalar. (bw, vl and f16c: the 16-bit weight loads and conversions; every CPU with avx512f but
// Xeon Phi has bw and vl, every one with avx2 has f16c.)
SimdLevel best_simd_level();
// Whether this CPU runs `level` (scalar always).
bool cpu_runs(SimdLevel level);
const char* simd_level_name(SimdLevel level);  // "avx512", "avx2", "scalar"

// Up to this many rows the kernel beats OpenBLAS (measured at one thread: 2-4x at M = 2..16).
constexpr int64_t kFewRows = 32;

// y[M, N] = x[M, K] w[N, K]^T, or y += x w^T when accumulate (y holding a bias). Row-major, dense.
// The threads of `workers` split the N output columns into contiguous slices of w, one each.
// `level` must be one the CPU runs (cpu_runs).
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const float* w,
                     int64_t N, float* y, bool accumulate);
// The same with 16-bit weights (`weights.dtype: bf16 | fp16`), widened to fp32 as they are loaded:
// the same fp32 products and sums as the float kernel on the widened weights, half the bytes read.
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BFloat16* w,
                     int64_t N, float* y, bool accumulate);
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const Half* w,
                     int64_t N, float* y, bool accumulate);
// Q8_0 weights (`weights.dtype: q8_0`; K a multiple of 32), dequantised in registers (q x d, exact in
// fp32) and multiplied by the fp32 x: the same products as fp32 weights holding the dequantised values.
void few_rows_matmul(SimdLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K,
                     const BlockQ8_0* w, int64_t N, float* y, bool accumulate);

}  // namespace lowsync
