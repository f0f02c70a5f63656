#pragma once
// The bf16_dot kernels' naive reference: one result element, x's row rounded to bf16 as the kernels
// round it, every product and sum in double. `magnitude` (the sum of |terms|) scales the fp32
// summation bound each test states.
#include <cmath>
#include <cstdint>

#include "layers/narrow_float.h"

namespace lowsync::test {

struct DotReference {
  double value = 0, magnitude = 0;
};

// start + sum_k bf16(x[k]) w[k], for k in [0, K).
inline DotReference bf16_rounded_x_dot(const float* x, const BFloat16* w, int64_t K, double start) {
  DotReference r{start, std::fabs(start)};
  for (int64_t k = 0; k < K; ++k) {
    const double p = double(to_float(to_bf16(x[k]))) * to_float(w[k]);
    r.value += p;
    r.magnitude += std::fabs(p);
  }
  return r;
}

}  // namespace lowsync::test
