#pragma once
// The kernel tests' inputs: uniform values in [-1, 1) from a seeded generator, and those values
// stored in a weight type (bf16, fp16; `keep` for fp32).
#include <cstdint>
#include <random>
#include <vector>

namespace lowsync::test {

inline std::vector<float> random_values(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

template <typename W>
std::vector<W> narrowed(const std::vector<float>& v, W (*to)(float)) {
  std::vector<W> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = to(v[i]);
  return out;
}
inline float keep(float f) { return f; }

}  // namespace lowsync::test
