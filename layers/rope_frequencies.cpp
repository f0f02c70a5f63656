#include "layers/rope_frequencies.h"

#include <cmath>

namespace lowsync {

// float32 throughout, as transformers computes them (torch tensors of float32 with Python scalars).
std::vector<float> rope_inv_freq(const ModelConfig& cfg) {
  const int half = cfg.head_dim / 2;
  const RopeScaling& s = cfg.rope_scaling;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = 1.f / std::pow(cfg.rope_theta, float(2 * i) / float(cfg.head_dim));
  if (s.type == RopeScaling::Type::Linear) {
    // Positions divided by `factor`, i.e. every frequency divided by it.
    for (float& f : inv_freq) f /= s.factor;
  } else if (s.type == RopeScaling::Type::Llama3) {
    // Llama 3.1: wavelengths shorter than original_context / high_freq_factor stay; longer than
    // original_context / low_freq_factor are stretched by `factor`; between, interpolated smoothly.
    const float low_freq_wavelen = float(s.original_max_positions) / s.low_freq_factor;
    const float high_freq_wavelen = float(s.original_max_positions) / s.high_freq_factor;
    for (float& f : inv_freq) {
      const float wavelen = float(2 * M_PI) / f;
      if (wavelen > low_freq_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const float smooth = (float(s.original_max_positions) / wavelen - s.low_freq_factor) /
                             (s.high_freq_factor - s.low_freq_factor);
        f = (1 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv_freq;
}

}  // namespace lowsync
