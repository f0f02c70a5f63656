#pragma once
// Host memory for the CPU backend's activations (its zeros() and scratch() tensors).
//
// 64-byte aligned: the many-rows kernels write y in tiles of 32 floats (128 bytes) a row, which
// then fill whole cache lines, and two threads writing neighbouring panels share none. (Measured on
// Zen 5, SmolLM2's bf16_dot prefill products at 512 rows with y on a cache line or 16 bytes past
// one: no difference beyond the +-2% noise, at one thread or two. It costs 63 bytes a tensor.)
//
// Kept in the process once freed: a prefill pass asks for the same sizes layer after layer
// (SmolLM2, 512 tokens: ~14 MB a layer), and glibc by default maps a large block afresh for each
// request and gives the top of its heap back to the OS once over its trim threshold (twice the
// largest block seen), so every layer's tensors were new pages, each 4 KB faulted in and zeroed
// by the OS on first write, by the product kernels' threads: 108k page faults per 512-token
// SmolLM2 prefill pass, which cost no less wall time at two threads than at one, so the products
// with the most output per unit of work, gate and up (3 MB each, K = 576), lost most and scaled
// worst: bench_engine's profile, bf16_dot, gate/up 184 ms a pass at one thread and 149 at two
// (1.23x); 113 and 64 (1.77x) with freed memory kept and no page faults per pass. The heap then
// holds the largest pass's activations, which the next pass needs again. Blocks over glibc's
// largest mapping threshold (32 MiB) are still mapped per request.
#include <cstdint>
#include <memory>

namespace lowsync {

// `floats` values (at least one), zero-filled when `zero`, else as they come; freed with the last
// copy of the pointer.
std::shared_ptr<float> activation_memory(int64_t floats, bool zero);

}  // namespace lowsync
