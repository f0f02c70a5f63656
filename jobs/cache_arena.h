#pragma once
// Rows of a KV cache handed to sequences as they start and taken back as they finish (continuous
// batching): first fit over the free ranges, neighbours merged on release. A sequence needs one
// contiguous range (the attention kernels read rows [base, base + length)).
#include <cstdint>
#include <iterator>
#include <map>

namespace lowsync {

class CacheArena {
 public:
  CacheArena() = default;  // no rows
  explicit CacheArena(int64_t rows) { free_[0] = rows; }

  // The first row of a free range of `rows`, or -1 when none is long enough now.
  int64_t take(int64_t rows) {
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < rows) continue;
      const int64_t base = it->first, left = it->second - rows;
      free_.erase(it);
      if (left > 0) free_[base + rows] = left;
      return base;
    }
    return -1;
  }

  void give_back(int64_t base, int64_t rows) {
    auto it = free_.emplace(base, rows).first;
    if (auto next = std::next(it); next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }

 private:
  std::map<int64_t, int64_t> free_;  // first row -> length
};

}  // namespace lowsync
