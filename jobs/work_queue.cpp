#include "jobs/work_queue.h"

#include <cstring>

#include "jobs/result_bytes.h"
#include "mpi_comm/trace.h"

namespace lowsync {

namespace {

enum Tag { kRequest = 101, kAssign = 102, kResult = 103 };

}  // namespace

WorkQueue::WorkQueue(ParallelGroups& groups, std::vector<Batch> batches, ResultWriter* writer)
    : g_(groups), batches_(std::move(batches)), writer_(writer) {
  leaders_left_ = g_.world.size() / g_.replica.size() - 1;
}

int64_t WorkQueue::take_next_on_root() {
  return next_ < static_cast<int64_t>(batches_.size()) ? next_++ : -1;
}

// Root: answers every request and takes every result that has arrived (all of them, if block).
void WorkQueue::serve_requests(bool block) {
  for (;;) {
    const Communicator::Incoming msg = g_.world.probe(block);
    if (msg.source < 0) return;
    if (msg.tag == kRequest) {
      char dummy;
      g_.world.recv(&dummy, 1, msg.source, kRequest);
      int64_t index = take_next_on_root();
      if (index < 0) --leaders_left_;
      g_.world.send(&index, sizeof index, msg.source, kAssign);
    } else if (msg.tag == kResult) {
      std::vector<char> bytes(msg.bytes);
      g_.world.recv(bytes.data(), msg.bytes, msg.source, kResult);
      int64_t index;
      auto rows = unpack_results(bytes, index);
      deliver(index, std::move(rows));
    }
    if (block) return;
  }
}

// Root: keeps results until every earlier batch is written, then appends in input order.
void WorkQueue::deliver(int64_t index, std::vector<RowResult> results) {
  pending_[index] = std::move(results);
  while (pending_.count(written_)) {
    trace::Span span("io", "hdf5 append", "\"rows\": " + std::to_string(pending_[written_].size()));
    writer_->append(pending_[written_]);
    pending_.erase(written_++);
    if (on_written_) on_written_(writer_->rows_done());
  }
}

// The next batch index of this replica, the same on all of its ranks (-1: none left).
int64_t WorkQueue::next_for_replica() {
  int64_t index = -1;
  if (g_.world.rank() == 0) {
    index = take_next_on_root();
  } else if (g_.is_leader()) {
    if (!asked_) {
      char dummy = 0;
      g_.world.send(&dummy, 1, 0, kRequest);
    }
    g_.world.recv(&index, sizeof index, 0, kAssign);
    asked_ = false;
  }
  g_.replica.broadcast(&index, sizeof index, 0);
  return index;
}

void WorkQueue::run(const std::function<std::vector<RowResult>(const Batch&)>& compute,
                    const std::function<void(int64_t)>& on_written) {
  on_written_ = on_written;
  const bool root = g_.world.rank() == 0;
  for (int64_t index = next_for_replica(); index >= 0; index = next_for_replica()) {
    if (g_.is_leader() && !root) {  // ask for the next batch now: it is at hand when this one ends
      char dummy = 0;
      g_.world.send(&dummy, 1, 0, kRequest);
      asked_ = true;
    }
    std::vector<RowResult> results = compute(batches_[index]);
    if (root) {
      deliver(index, std::move(results));
      serve_requests(false);
    } else if (g_.is_leader()) {
      // Non-blocking: a large message would otherwise wait for rank 0 to finish its own batch.
      if (outbox_request_ != MPI_REQUEST_NULL) g_.world.wait(outbox_request_);
      outbox_ = pack_results(index, results);
      outbox_request_ = g_.world.isend(outbox_.data(), static_cast<int64_t>(outbox_.size()), 0, kResult);
    }
  }
  if (outbox_request_ != MPI_REQUEST_NULL) g_.world.wait(outbox_request_);
  if (root) {  // no batches left here: serve the others until every result is in
    while (leaders_left_ > 0 || written_ < static_cast<int64_t>(batches_.size())) serve_requests(true);
  }
}

}  // namespace lowsync
