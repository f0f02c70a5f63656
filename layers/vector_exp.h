#pragma once
// The exponentials of the CPU backend's element-wise steps, a vector at a time: softmax over
// attention scores and SiLU over the FFN's gate. A prefill pass of SmolLM2 over 512 tokens takes
// about 35 million exponentials in its softmaxes and 24 million in its SiLUs; one at a time
// (std::exp) they cost a tenth of the pass.
//
// With AVX-512 (picked at run time): e^x = 2^n e^r, n = round(x / ln 2), r = x - n ln 2 (ln 2 in
// two parts, so r is exact to a few ulp), e^r by Cephes' degree-7 polynomial for expf, 2^n by
// vscalefps (which also gives 0 below the smallest subnormal and infinity above FLT_MAX): within
// 2 ulp of the exact value for every fp32 x (tested against double precision). Elsewhere std::exp.
#include <cstdint>

namespace lowsync {

// x[i] = exp(scale * x[i] - shift) for i < n; returns the sum of the new x[i] (fp32, in lanes).
// Softmax: scale the scores' factor, shift the largest scaled score.
float exp_and_sum(float* x, int64_t n, float scale, float shift);

// sum_i exp(x[i] - shift) for i < n, each exponential in fp32 (as above), summed in double:
// log-softmax's normaliser over a whole vocabulary, where an fp32 sum would lose digits.
double exp_sum_double(const float* x, int64_t n, float shift);

// gate[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i]  (SwiGLU's product).
void silu_mul(float* gate, const float* up, int64_t n);

}  // namespace lowsync
