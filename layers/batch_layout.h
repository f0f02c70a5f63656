#pragma once
// How the sequences of one forward pass sit in the packed token rows and in the KV cache. Packing
// (no padding) means sequence s owns rows [token_begin, token_begin + n_new) of every activation;
// its keys and values live in cache rows [cache_base, cache_base + past + n_new).
#include <cstdint>
#include <vector>

namespace lowsync {

struct SequenceSlot {
  int64_t token_begin = 0;  // first packed row of this sequence's new tokens
  int64_t n_new = 0;        // tokens computed in this pass (prompt length in prefill, 1 in decode)
  int64_t past = 0;         // tokens already in the cache (their positions are 0 .. past-1)
  int64_t cache_base = 0;   // first cache row reserved for this sequence
};

struct BatchLayout {
  std::vector<SequenceSlot> seqs;
  std::vector<int32_t> positions;  // one per packed row: past + i
  int64_t tokens() const { return static_cast<int64_t>(positions.size()); }

  void add(int64_t n_new, int64_t past, int64_t cache_base) {
    seqs.push_back({tokens(), n_new, past, cache_base});
    for (int64_t i = 0; i < n_new; ++i) positions.push_back(static_cast<int32_t>(past + i));
  }
};

}  // namespace lowsync
