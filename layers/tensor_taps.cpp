#include "layers/tensor_taps.h"

#include <fnmatch.h>

#include <algorithm>

namespace lowsync {

bool TensorTaps::wants(const std::string& name) const {
  for (const std::string& p : patterns_)
    if (fnmatch(p.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

void TensorTaps::take(const std::string& name, Backend& be, const Tensor& t) {
  if (!wants(name)) return;
  if (std::any_of(tensors_.begin(), tensors_.end(), [&](const TappedTensor& x) { return x.name == name; })) return;
  TappedTensor copy{name, t.rows, t.cols, std::vector<float>(static_cast<size_t>(t.numel()))};
  be.to_host(t, copy.data.data());
  tensors_.push_back(std::move(copy));
}

}  // namespace lowsync
