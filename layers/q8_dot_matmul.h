#pragma once
// Decode products with q8_0 weights and q8_0 activations (`weights.q8_dot: true`), as llama.cpp's
// Q8_0 type computes them: each row of x is quantised once per product to q8_0 blocks (32 int8 and
// an fp16 scale along K, exactly as the weights: layers/q8_0.h's quantize_q8_0, i.e. ggml's
// reference rounding), and each dot product sums, block by block, the block's 32 int8 x int8
// products in int32 (exact) times the two scales in fp32:
//
//   y[m, n] = sum_b  d_x[m, b] d_w[n, b] sum_{k in b} q_x[m, k] q_w[n, k]
//
// The exact q8_0 path (few_rows_matmul) converts every weight to fp32 and is bound by that work; here
// the weights stay 8-bit and VNNI's vpdpbusd does 64 (AVX-512) or 32 (AVX-VNNI) products per
// instruction. vpdpbusd multiplies unsigned by signed bytes, so it gets |q_x| and q_w with q_x's
// sign moved onto it (the sign trick; q8_0 never holds -128, so neither side overflows).
// The price is the activations' rounding: each element of x moves by at most half a step of its
// block plus the scale's fp16 rounding (up to 127 x 2^-11 of a step), max|x_block| / 127 x 0.5625,
// so a product moves by at most sum_b max|x_b| / 226 x sum_{k in b} |w_k|.
//
// One build runs on any x86-64: the level is picked at run time (AVX512_VNNI, AVX-VNNI, AVX2's
// vpmaddubsw, scalar), and every level computes the same block sums exactly (fp32 sums in another
// order).
#include <cstdint>
#include <vector>

#include "layers/q8_0.h"
#include "layers/worker_threads.h"

namespace lowsync {

enum class Q8DotLevel { Scalar, Avx2, AvxVnni, Avx512Vnni };

// Whether this CPU runs `level` (scalar always), and the best one it runs.
bool cpu_runs(Q8DotLevel level);
Q8DotLevel best_q8_dot_level();
const char* q8_dot_level_name(Q8DotLevel level);  // "avx512_vnni", "avx_vnni", "avx2", "scalar"

// x [M, K] quantised for the kernel, K a multiple of 32: per row, the int8 values (q), their
// absolute values (|q|, vpdpbusd's unsigned side) and each block's scale as fp32 repeated over the
// 8 int32 lanes its block fills (the AVX-512 kernel loads two blocks' scales as one vector). Rows are
// `stride` bytes apart (K rounded up to 64, zeros after K) so that two blocks are one 64-byte load.
struct Q8Activations {
  int64_t M = 0, K = 0, stride = 0;
  std::vector<int8_t> q;       // [M, stride]
  std::vector<uint8_t> abs_q;  // [M, stride]
  std::vector<float> d8;       // [M, stride / 32 * 8]: block b's scale in lanes 8b .. 8b + 7
  int64_t blocks() const { return K / kQ8_0Block; }
};

// Quantises x [M, K] into `out` (resized), block by block exactly as quantize_q8_0 (any level).
void quantize_activations(Q8DotLevel level, const float* x, int64_t M, int64_t K, Q8Activations& out);

// y[M, N] = q8_0(x)[M, K] w[N, K]^T, or y += it when accumulate; K a multiple of 32, w rows of K / 32
// blocks whose values are in [-127, 127] (as quantize_q8_0 makes them). `level` must be one the CPU
// runs. The threads of `workers` split the N output columns into contiguous slices of w.
// `scratch` holds the quantised x, reused between calls.
void q8_dot_matmul(Q8DotLevel level, WorkerThreads& workers, const float* x, int64_t M, int64_t K, const BlockQ8_0* w,
                   int64_t N, float* y, bool accumulate, Q8Activations& scratch);

}  // namespace lowsync
