// Activation memory (layers/activation_memory.h): 64-byte aligned, zero-filled when asked, and a
// freed block's pages reused by the next request (a prefill pass's sizes, layer after layer)
// rather than faulted in afresh: the page faults of writing a freed-and-asked-again 3 MiB block,
// counted by the kernel (getrusage), are a small fraction of its 768 pages.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdint>
#include <cstring>
#include <memory>

#include "layers/activation_memory.h"

namespace lowsync {
namespace {

long minor_faults() {
  rusage u;
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_minflt;
}

TEST(ActivationMemory, AlignedAndZeroFilledWhenAsked) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(17), int64_t(1) << 20, int64_t(9) << 20}) {
    std::shared_ptr<float> p = activation_memory(n, true);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(p.get()) % 64, 0u) << n;
    for (int64_t i = 0; i < n; i += 4093) ASSERT_EQ(p.get()[i], 0.f) << n << " at " << i;
    if (n > 0) ASSERT_EQ(p.get()[n - 1], 0.f) << n;
    std::shared_ptr<float> q = activation_memory(n, false);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(q.get()) % 64, 0u) << n;
  }
}

TEST(ActivationMemory, FreedBlocksAreNotFaultedInAgain) {
  constexpr int64_t kFloats = int64_t(3) << 18;  // 3 MiB: a 512-token pass's gate or up product of SmolLM2
  constexpr long kPages = kFloats * 4 / 4096;
  for (int layer = 0; layer < 2; ++layer) {  // the first round may take new pages from the OS
    std::shared_ptr<float> a = activation_memory(kFloats, false), b = activation_memory(kFloats, false);
    std::memset(a.get(), 1, kFloats * 4);
    std::memset(b.get(), 1, kFloats * 4);
  }
  const long before = minor_faults();
  for (int layer = 0; layer < 4; ++layer) {
    std::shared_ptr<float> a = activation_memory(kFloats, false), b = activation_memory(kFloats, false);
    std::memset(a.get(), 1, kFloats * 4);
    std::memset(b.get(), 1, kFloats * 4);
  }
  EXPECT_LT(minor_faults() - before, kPages / 8) << "of " << 8 * kPages << " pages written";
}

}  // namespace
}  // namespace lowsync
