#pragma once
// Uniform values in [-1, 1) from a seeded generator: the kernel tests' inputs.
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

}  // namespace lowsync::test
