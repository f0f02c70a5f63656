#pragma once
// The job key `memory.pool` as a closed set, read by the job YAML (io/) and the plan, which
// decides from it where each rank's layers beyond its memory.limit wait until they are used.
#include <string>

namespace lowsync {

// host: the memory-mapped checkpoint, i.e. the host's page cache, is the pool (a rank reads its
// streamed layers from it). peer: another rank, one with memory to spare, holds them and sends
// each one when asked (layers/peer_pool.h).
enum class MemoryPool { Host, Peer };
inline const char* memory_pool_name(MemoryPool p) { return p == MemoryPool::Host ? "host" : "peer"; }
inline bool parse_memory_pool(const std::string& name, MemoryPool& out) {  // false for an unknown name
  if (name != "host" && name != "peer") return false;
  out = name == "host" ? MemoryPool::Host : MemoryPool::Peer;
  return true;
}

}  // namespace lowsync
