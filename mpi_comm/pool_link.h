#pragma once
// The messages of peer memory pooling (memory.pool: peer, layers/peer_pool.h), on a communicator
// of their own (a duplicate of world) so that they never match the job's other messages.
//
// Why point-to-point with threads, not one-sided windows: a window's passive-target Get over TCP
// progresses only while the target rank is inside MPI, and a holder busy computing its own layers
// rarely is, so a fetch would stall for most of the holder's pass. Here the holder runs a serving
// thread that waits for requests and sends the layer at once, whatever its main thread does; the
// rank that streams asks for a layer and receives it on its read-ahead thread, one layer before
// use. Both run beside the main thread's collectives, so MPI must grant MPI_THREAD_MULTIPLE
// (mpi_comm/mpi_session.h asks for it; this refuses, naming the level granted, when it did not).
//
// Waiting is a short poll (a probe, then a sleep of ~50 us), not a blocking call: Open MPI's
// blocking calls spin on a core, which the rank's own compute needs. The calls are counted here
// (bytes, seconds), not by the watchdog or the trace: a holder's serving thread waits for requests
// the whole job, and both of those follow the main thread only.
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "mpi_comm/communicator.h"

namespace lowsync {

class PoolLink {
 public:
  // UserError, naming the level granted, when MPI did not grant MPI_THREAD_MULTIPLE.
  static void require_thread_multiple();
  explicit PoolLink(const Communicator& world);  // collective over world

  // The side that streams (its read-ahead thread, one call at a time):
  void ask(int holder, int32_t layer);  // layer -1: this rank asks no more (the holder may stop)
  void receive(int holder, std::vector<std::byte>& into);  // the layer's bytes, any size (`into` resized)

  // The holder's serving thread:
  struct Request {
    int from = -1;  // -1: `quit` was set before a request came
    int32_t layer = -1;
  };
  Request next_request(const std::atomic<bool>& quit);
  void send(int to, const std::vector<std::byte>& bytes);

  int64_t bytes_received() const { return received_; }
  int64_t bytes_sent() const { return sent_; }

 private:
  void check(int err, const char* call) const;
  Communicator comm_;
  std::atomic<int64_t> received_{0}, sent_{0};
};

}  // namespace lowsync
