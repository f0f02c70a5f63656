#pragma once
// Host memory for the CPU backend's activations (its zeros() and scratch() tensors).
//
// 64-byte aligned: the many-rows kernels write y in tiles of 32 floats (128 bytes) a row, which
// then fill whole cache lines, and two threads writing neighbouring panels share none (measured:
// one layer's bf16_dot prefill products 5-15% faster than on the heap's 16-byte alignment).
//
// Kept in the process once freed: a prefill pass asks for the same sizes layer after layer
// (SmolLM2, 512 tokens: ~14 MB a layer), and glibc by default maps a large block afresh for each
// request and gives the top of its heap back to the OS once over its trim threshold (twice the
// largest block seen), so every layer's tensors were new pages, each 4 KB faulted in and zeroed by
// the kernel on first write, by the kernels' threads (measured: 108k page faults per 512-token
// SmolLM2 prefill pass; ~440 once freed memory is kept, and bf16_dot passes 1.35x faster at one
// thread, 1.85x at two). The heap then holds the largest pass's activations, which the next pass
// needs again. Blocks over glibc's largest mapping threshold (32 MiB) are still mapped per request.
#include <cstdint>
#include <memory>

namespace lowsync {

// `floats` values (at least one), zero-filled when `zero`, else as they come; freed with the last
// copy of the pointer.
std::shared_ptr<float> activation_memory(int64_t floats, bool zero);

}  // namespace lowsync
