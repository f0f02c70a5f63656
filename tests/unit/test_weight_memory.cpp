// Weight memory (layers/weight_memory.h): 64-byte aligned, never overlapping, alive as long as the
// memory handed out is, whether it came out of a shared chunk or a chunk of its own.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "layers/weight_memory.h"

namespace lowsync {
namespace {

TEST(WeightMemory, AlignedDisjointAndOwnedByItsUsers) {
  std::vector<std::pair<std::shared_ptr<void>, size_t>> blocks;
  {
    WeightMemory memory;
    for (size_t bytes : {size_t(1), size_t(100), size_t(3) << 20, size_t(20) << 20, size_t(7) << 20, size_t(64),
                         size_t(30) << 20, size_t(5) << 20}) {
      std::shared_ptr<void> p = memory.take(bytes);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(p.get()) % 64, 0u) << bytes;
      std::memset(p.get(), int(blocks.size()) + 1, bytes);
      blocks.emplace_back(std::move(p), bytes);
    }
  }  // the WeightMemory is gone; what it handed out stays
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto* b = static_cast<const unsigned char*>(blocks[i].first.get());
    for (size_t at : {size_t(0), blocks[i].second / 2, blocks[i].second - 1})
      ASSERT_EQ(b[at], i + 1) << "block " << i << " was overwritten at " << at;
  }
}

}  // namespace
}  // namespace lowsync
