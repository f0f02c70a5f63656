#include "layers/weight_memory.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace lowsync {

namespace {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kChunk = size_t(32) << 20;
constexpr size_t kOwnChunk = size_t(8) << 20;  // a matrix above this gets a chunk of its own

// `bytes` rounded up to whole huge pages, aligned to one, asked to be backed by huge pages.
std::shared_ptr<char> huge_chunk(size_t bytes) {
  const size_t size = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, size);
  if (!p) throw std::bad_alloc();
  madvise(p, size, MADV_HUGEPAGE);  // advice: without huge pages the memory works the same
  return std::shared_ptr<char>(static_cast<char*>(p), [](char* q) { std::free(q); });
}

}  // namespace

std::shared_ptr<void> WeightMemory::take(size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  if (bytes > kOwnChunk) return huge_chunk(bytes);
  if (used_ + bytes > size_) {
    chunk_ = huge_chunk(kChunk);
    used_ = 0;
    size_ = kChunk;
  }
  std::shared_ptr<void> out(chunk_, chunk_.get() + used_);  // shares the chunk's ownership
  used_ += bytes;
  return out;
}

}  // namespace lowsync
