#include "layers/activation_memory.h"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace lowsync {

namespace {

constexpr size_t kAlign = 64;  // bytes: a cache line

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
  // malloc and round up, not aligned new: glibc 2.36's memalign asks its heap for the size plus
  // the alignment, so a freed block of the same size never fits the next request and every layer
  // took new pages again (measured: 1536 page faults a round for two 3 MiB blocks, 0 this way).
  void* raw = std::malloc(n * sizeof(float) + kAlign - 1);
  if (!raw) throw std::bad_alloc();
  auto* p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(raw) + kAlign - 1) / kAlign * kAlign);
  if (zero) std::fill(p, p + n, 0.f);
  return std::shared_ptr<float>(p, [raw](float*) { std::free(raw); });
}

}  // namespace lowsync
