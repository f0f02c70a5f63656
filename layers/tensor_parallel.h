#pragma once
// The ranks that share one replica's layers (Megatron-style tensor parallelism). Its all_reduce is
// the only communication inside a transformer block: Q/K/V and FFN-up are column-parallel (each rank
// owns whole heads and a slice of FFN columns), attention-out and FFN-down are row-parallel, so a
// block's partial outputs are summed across ranks. Its all_gathers join the slices of a split
// output head (host vectors: the head's results are read on the host).
#include <cstdint>
#include <vector>

#include "layers/backend.h"
#include "mpi_comm/communicator.h"

namespace lowsync {

class TensorParallelGroup {
 public:
  TensorParallelGroup() = default;  // one rank: nothing to share
  // `sync`: how the partial sums travel (parallel.sync_dtype; fp32 is exact).
  TensorParallelGroup(Communicator* comm, Backend* be, SyncDType sync = SyncDType::F32)
      : comm_(comm), be_(be), sync_(sync) {}

  int rank() const { return comm_ ? comm_->rank() : 0; }
  int size() const { return comm_ ? comm_->size() : 1; }
  SyncDType sync_dtype() const { return sync_; }

  // all = every rank's `mine`, in rank order (the same length on every rank).
  void all_gather(const std::vector<double>& mine, std::vector<double>& all) {
    all.resize(mine.size() * size());
    if (size() == 1) {
      all = mine;
      return;
    }
    comm_->all_gather(mine.data(), static_cast<int64_t>(mine.size()), all.data());
  }
  // all = every rank's `mine` (counts[r] values from rank r), in rank order.
  void all_gather(const std::vector<float>& mine, const std::vector<int64_t>& counts, std::vector<float>& all) {
    int64_t total = 0;
    for (int64_t c : counts) total += c;
    all.resize(total);
    if (size() == 1) {
      all = mine;
      return;
    }
    comm_->all_gather(mine.data(), counts, all.data());
  }
  void set_sync_dtype(SyncDType d) { sync_ = d; }  // calibration measures each
  Communicator* comm() const { return comm_; }

  // x = sum over ranks of x. Device tensors are staged through host memory.
  void all_reduce(Tensor& x) {
    if (size() == 1) return;
    if (float* host = be_->host_data(x)) {
      comm_->all_reduce(host, x.numel(), sync_);
      return;
    }
    float* staged = be_->host_staging(x.numel());
    if (!staged) {
      staging_.resize(x.numel());
      staged = staging_.data();
    }
    be_->to_host(x, staged);
    comm_->all_reduce(staged, x.numel(), sync_);
    be_->from_host(staged, x);
  }

 private:
  Communicator* comm_ = nullptr;
  Backend* be_ = nullptr;
  SyncDType sync_ = SyncDType::F32;
  std::vector<float> staging_;
};

}  // namespace lowsync
