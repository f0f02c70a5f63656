#pragma once
// The job key `weights.dtype` as a closed set, read by the job YAML (io/), the plan (its memory)
// and the backend factory (jobs/make_backend).
#include <cstdint>
#include <string>

namespace lowsync {

// `weights.dtype`: how the CPU backend stores weight matrices. auto: as the checkpoint stores them
// (bf16 and fp16 checkpoints stay 16-bit, fp32 ones fp32); resolved from the checkpoint's header
// before the plan is made (jobs/make_backend.h: with_resolved_weights).
enum class WeightsDType { Auto, F32, BF16, F16, Q8_0 };
inline const char* weights_dtype_name(WeightsDType d) {
  switch (d) {
    case WeightsDType::Auto: return "auto";
    case WeightsDType::F32: return "fp32";
    case WeightsDType::BF16: return "bf16";
    case WeightsDType::F16: return "fp16";
    case WeightsDType::Q8_0: return "q8_0";
  }
  return "?";
}
inline bool parse_weights_dtype(const std::string& name, WeightsDType& out) {  // false for an unknown name
  for (WeightsDType d : {WeightsDType::Auto, WeightsDType::F32, WeightsDType::BF16, WeightsDType::F16, WeightsDType::Q8_0})
    if (name == weights_dtype_name(d)) {
      out = d;
      return true;
    }
  return false;
}
// Bytes one value of a weight matrix takes (auto unresolved: fp32's); q8_0: 34 bytes per 32 values.
inline double weights_dtype_bytes(WeightsDType d) {
  if (d == WeightsDType::Q8_0) return 34.0 / 32;
  return d == WeightsDType::BF16 || d == WeightsDType::F16 ? 2 : 4;
}

}  // namespace lowsync
