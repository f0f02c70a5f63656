#pragma once
// Host memory for the CPU backend's weight matrices, on 2 MiB pages where the kernel grants them
// (madvise(MADV_HUGEPAGE); Linux's transparent huge pages in their `madvise` mode). A decode step
// streams every weight once, and with 4 KiB pages a core spends that read walking page tables:
// measured on SmolLM2's 113 MB head, one core reads it at 28 GB/s on 4 KiB pages and at 40 GB/s on
// 2 MiB ones. Matrices are carved out of shared 32 MiB chunks (64-byte aligned), so a model of
// many small matrices wastes no more than one partly used chunk; a matrix over 8 MiB gets chunk
// of its own. Where the kernel has no huge pages this is ordinary memory.
#include <cstddef>
#include <memory>

namespace lowsync {

class WeightMemory {
 public:
  // `bytes` of memory, kept alive by the returned pointer (and by nothing else of this object's).
  std::shared_ptr<void> take(size_t bytes);

 private:
  std::shared_ptr<char> chunk_;  // the chunk being filled
  size_t used_ = 0, size_ = 0;
};

}  // namespace lowsync
