#include "layers/activation_memory.h"

#include <algorithm>
#include <climits>
#include <new>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace lowsync {

namespace {

constexpr std::align_val_t kAlign{64};  // a cache line

// Freed blocks stay in the heap, large ones too (see the header). Process-wide: glibc has one
// such setting.
bool keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // the largest glibc takes; blocks below come from the heap
  mallopt(M_TRIM_THRESHOLD, INT_MAX);   // never give the heap's top back on free
#endif
  return true;
}

}  // namespace

std::shared_ptr<float> activation_memory(int64_t floats, bool zero) {
  static const bool kept = keep_freed_memory();  // once, before the first block
  (void)kept;
  const size_t n = static_cast<size_t>(std::max<int64_t>(floats, 1));
  float* p = static_cast<float*>(::operator new[](n * sizeof(float), kAlign));
  if (zero) std::fill(p, p + n, 0.f);
  return std::shared_ptr<float>(p, [](float* q) { ::operator delete[](q, kAlign); });
}

}  // namespace lowsync
