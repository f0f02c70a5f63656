#pragma once
// A named MPI communicator with typed collectives and counters. Every call is counted (calls,
// bytes this rank sent, seconds inside MPI) so that the run report can say what communication
// cost. MPI errors become MpiError naming the group, the rank and the call.
#include <mpi.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "mpi_comm/sync_codec.h"
#include "mpi_comm/sync_wait.h"

namespace lowsync {

struct MpiError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An error some rank raised inside Communicator::agree, delivered to every rank.
struct AgreedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CommCounters {
  int64_t calls = 0;
  int64_t bytes = 0;   // payload bytes this rank handed to MPI (an all-reduce's message, once)
  double wire_bytes = 0;  // bytes the collectives' algorithms send from this rank (mpi_comm/wire_bytes.h)
  double seconds = 0;  // wall time inside MPI calls (waiting included)
};

class Communicator {
 public:
  Communicator() = default;
  Communicator(MPI_Comm comm, std::string name);  // takes ownership unless comm is MPI_COMM_WORLD/SELF
  ~Communicator();
  Communicator(Communicator&& o) noexcept;
  Communicator& operator=(Communicator&& o) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& name() const { return name_; }
  MPI_Comm raw() const { return comm_; }
  const CommCounters& counters() const { return counters_; }
  CommCounters& counters() { return counters_; }
  // How all_reduce(float) and the all_gathers of floats and doubles wait (not Auto).
  void set_sync_wait(SyncWait w) { wait_ = w; }
  SyncWait sync_wait() const { return wait_; }

  // Collectives, in place where MPI allows it.
  void all_reduce(float* data, int64_t n);                     // sum
  void all_reduce(double* data, int64_t n);                    // sum
  // Sum with the payload compressed as `dtype` (fp32: the plain all-reduce above), identical on
  // every rank: small messages gather every rank's encoded partial and sum in fp32 (each partial
  // rounded once), large ones reduce-scatter encoded chunks and all-gather the sums as bf16
  // (mpi_comm/wire_bytes.h says which when). Counted as one call of its encoded partial.
  void all_reduce(float* data, int64_t n, SyncDType dtype);
  void all_reduce_max(int64_t* data, int64_t n);
  void all_gather(const float* send, int64_t n, float* recv);  // recv: n * size
  void all_gather(const double* send, int64_t n, double* recv);  // recv: n * size
  // Rank r sends counts[r] floats; recv: every rank's, in rank order (sum of counts).
  void all_gather(const float* send, const std::vector<int64_t>& counts, float* recv);
  void reduce_scatter(const float* send, float* recv, int64_t n_per_rank);
  void broadcast(void* data, int64_t bytes, int root);
  void barrier();
  void send(const void* data, int64_t bytes, int dest, int tag);
  void recv(void* data, int64_t bytes, int source, int tag);
  MPI_Request isend(const void* data, int64_t bytes, int dest, int tag);  // data must live until wait
  bool test(MPI_Request& req);  // completed? (then req is MPI_REQUEST_NULL)

  // A message waiting to be received: from any rank, with any tag.
  struct Incoming {
    int source = -1, tag = -1;
    int64_t bytes = 0;
  };
  // Waits for the next message (block) or looks for one (source -1 when none is there yet).
  Incoming probe(bool block);

  // Non-blocking all-reduce: start, do other work, wait.
  MPI_Request iall_reduce(float* data, int64_t n);
  void wait(MPI_Request& req);

  // Every rank runs `step`; if it throws on any rank, every rank throws AgreedError with the
  // message of the lowest failing rank (so rank 0 can print it and all ranks exit together).
  void agree(const std::function<void()>& step);

  // Splits this group: ranks with the same color form a new group, ordered by key.
  Communicator split(int color, int key, const std::string& name) const;
  // The ranks of this group that share a host's memory (MPI_COMM_TYPE_SHARED), in rank order.
  Communicator split_by_host(const std::string& name) const;
  // Every rank's `bytes` bytes, in rank order (recv: bytes * size).
  void all_gather_bytes(const void* send, int64_t bytes, void* recv);

 private:
  void check(int err, const char* call) const;
  void wait_sleeping(MPI_Request& req, const char* call);  // SyncWait::Sleep's wait
  void gather_and_sum(float* data, int64_t n, SyncDType dtype);             // all_reduce(.., dtype)'s two ways
  void reduce_scatter_and_gather(float* data, int64_t n, SyncDType dtype);
  static constexpr int kSyncTag = 0x5359;  // the gather's point-to-point swaps (no other message uses it)
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::string name_;
  int rank_ = 0, size_ = 1;
  bool owned_ = false;
  CommCounters counters_;
  SyncWait wait_ = SyncWait::Spin;
  struct SyncBuffers {  // reused by the compressed all-reduce, so a sync allocates nothing
    std::vector<float> values;
    std::vector<uint8_t> send, recv;
  } sync_;
};

}  // namespace lowsync
