#include "jobs/work_queue.h"

#include <cstring>
#include <stdexcept>
#include <string>

#include "jobs/stop_signal.h"

#include "jobs/result_bytes.h"
#include "mpi_comm/trace.h"

namespace lowsync {

namespace {

// kAssign: [batch index (-1: none), its first row, its end row]. kStop: a replica stops; payload
// [the batch it was handed and gives back, or -1; the signal].
enum Tag { kRequest = 101, kAssign = 102, kResult = 103, kStop = 104 };

}  // namespace

WorkQueue::WorkQueue(ParallelGroups& groups, std::vector<Batch> batches, ResultWriter* writer)
    : g_(groups), batches_(std::move(batches)), writer_(writer) {
  leaders_left_ = g_.world.size() / g_.replica.size() - 1;
}

int64_t WorkQueue::take_next_on_root() {
  if (stopped_by_ != 0 || held_back_ || next_ >= static_cast<int64_t>(batches_.size())) return -1;
  if (hand_out_) {
    const int64_t rows = hand_out_(next_, batches_);
    if (rows <= 0) {
      held_back_ = true;
      return -1;
    }
    Batch& b = batches_[next_];
    if (rows < b.end_row - b.first_row) {  // a smaller hand-out: the rest is the next batch
      const Batch rest{b.first_row + rows, b.end_row};
      b.end_row = rest.first_row;
      batches_.insert(batches_.begin() + next_ + 1, rest);
    }
  }
  return next_++;
}

void WorkQueue::stop_on_root(int sig) {
  if (stopped_by_ == 0) stopped_by_ = sig;
}

// Root: answers every request and takes every result that has arrived (all of them, if block).
void WorkQueue::serve_requests(bool block) {
  for (;;) {
    const Communicator::Incoming msg = g_.world.probe(block);
    if (msg.source < 0) return;
    // Rank 0's own signal counts here too: its replica may be done while others still compute.
    if (const int sig = stop_signal()) stop_on_root(sig);
    if (msg.tag == kRequest) {
      char dummy;
      g_.world.recv(&dummy, 1, msg.source, kRequest);
      const int64_t index = take_next_on_root();
      if (index < 0)
        --leaders_left_;
      else
        ++outstanding_;
      const int64_t assign[3] = {index, index < 0 ? 0 : batches_[index].first_row, index < 0 ? 0 : batches_[index].end_row};
      g_.world.send(assign, sizeof assign, msg.source, kAssign);
    } else if (msg.tag == kResult) {
      std::vector<char> bytes(msg.bytes);
      g_.world.recv(bytes.data(), msg.bytes, msg.source, kResult);
      int64_t index;
      auto rows = unpack_results(bytes, index);
      --outstanding_;
      deliver(index, std::move(rows));
    } else if (msg.tag == kStop) {
      int64_t stop[2];
      g_.world.recv(stop, sizeof stop, msg.source, kStop);
      --leaders_left_;
      stop_on_root(static_cast<int>(stop[1]));
      if (stop[0] >= 0) {  // handed out, never computed: nothing after it can be written
        --outstanding_;
        if (first_given_back_ < 0 || stop[0] < first_given_back_) first_given_back_ = stop[0];
      }
    }
    if (block) return;
  }
}

// Root: keeps results until every earlier batch is written, then appends in input order.
void WorkQueue::deliver(int64_t index, std::vector<RowResult> results) {
  if (on_result_) on_result_(index);
  pending_[index] = std::move(results);
  while (pending_.count(written_) && (first_given_back_ < 0 || written_ < first_given_back_)) {
    {
      trace::Span span("io", "hdf5 append", "\"rows\": " + std::to_string(pending_[written_].size()));
      WritingBatch writing;  // a second signal waits until this batch is on disk
      writer_->append(pending_[written_]);
    }
    if (on_written_) on_written_(writer_->rows_done(), pending_[written_]);
    pending_.erase(written_++);
  }
}

// The next batch index of this replica, the same on all of its ranks (-1: none left, or the run
// stops).
int64_t WorkQueue::next_for_replica() {
  // Whether any rank of the replica was signalled: all of them leave the loop here together.
  int64_t sig = stop_signal();
  g_.replica.all_reduce_max(&sig, 1);
  int64_t assign[3] = {-1, 0, 0};  // index, first row, end row
  if (g_.world.rank() == 0) {
    if (sig) stop_on_root(static_cast<int>(sig));
    serve_requests(false);  // a replica that asked first is answered first
    assign[0] = take_next_on_root();
    if (assign[0] >= 0) assign[1] = batches_[assign[0]].first_row, assign[2] = batches_[assign[0]].end_row;
  } else if (g_.is_leader() && sig) {
    // The batch asked for while computing the last one is given back: rank 0 must not wait for it.
    int64_t stop[2] = {-1, sig};
    if (asked_) {
      g_.world.recv(assign, sizeof assign, 0, kAssign);
      stop[0] = assign[0];
      assign[0] = -1;
    }
    // -1 there: rank 0 already counted this replica out ("no more"), and expects nothing more.
    if (!asked_ || stop[0] >= 0) g_.world.send(stop, sizeof stop, 0, kStop);
    asked_ = false;
  } else if (g_.is_leader()) {
    if (!asked_) {
      char dummy = 0;
      g_.world.send(&dummy, 1, 0, kRequest);
    }
    g_.world.recv(assign, sizeof assign, 0, kAssign);
    asked_ = false;
  }
  g_.replica.broadcast(assign, sizeof assign, 0);
  const int64_t index = assign[0];
  if (index >= 0 && g_.world.rank() != 0) {  // rank 0 may have cut it (a smaller hand-out)
    if (index >= static_cast<int64_t>(batches_.size())) batches_.resize(index + 1);
    batches_[index] = {assign[1], assign[2]};
  }
  return index;
}

int64_t WorkQueue::take() {
  const int64_t index = next_for_replica();
  if (index >= 0 && g_.is_leader() && g_.world.rank() != 0) {
    // Ask for the next batch now: it is at hand when this one ends.
    char dummy = 0;
    g_.world.send(&dummy, 1, 0, kRequest);
    asked_ = true;
  }
  return index;
}

void WorkQueue::complete(int64_t index, std::vector<RowResult> results) {
  if (g_.world.rank() == 0) {
    deliver(index, std::move(results));
    serve_requests(false);
  } else if (g_.is_leader()) {
    // Non-blocking: a large message would otherwise wait for rank 0 to finish its own batch.
    if (outbox_request_ != MPI_REQUEST_NULL) g_.world.wait(outbox_request_);
    outbox_ = pack_results(index, results);
    outbox_request_ = g_.world.isend(outbox_.data(), static_cast<int64_t>(outbox_.size()), 0, kResult);
  }
}

void WorkQueue::answer_arrived() {
  if (g_.world.rank() == 0) serve_requests(false);
}

void WorkQueue::finish() {
  if (outbox_request_ != MPI_REQUEST_NULL) g_.world.wait(outbox_request_);
  if (g_.world.rank() != 0) return;
  // No batches left here: serve the others until each has left and its results are in.
  while (leaders_left_ > 0 || outstanding_ > 0) serve_requests(true);
  // Without a stop every batch handed out (all of them unless the rule held some back) has come
  // back, so all are written.
  if (stopped_by_ == 0 && written_ != next_)
    throw std::logic_error("WorkQueue: " + std::to_string(next_ - written_) + " batches never written");
}

void WorkQueue::run(const std::function<std::vector<RowResult>(const Batch&)>& compute,
                    const std::function<void(int64_t, const std::vector<RowResult>&)>& on_written) {
  set_on_written(on_written);
  for (int64_t index = take(); index >= 0; index = take()) complete(index, compute(batches_[index]));
  finish();
}

}  // namespace lowsync
