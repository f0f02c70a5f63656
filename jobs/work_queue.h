#pragma once
// Data parallelism: replicas take batches dynamically and world rank 0 writes every result.
// World rank 0 hands out batch indices (its own replica takes the next one between its batches,
// after answering the requests that arrived first; with continuous batching it answers after each pass);
// each other replica's leader asks for its next batch before computing the current one, so a
// replica that finishes has its next batch at hand, and ships its results to rank 0, which
// appends them to the output file in input order.
//
// Stopping (a signal, see jobs/stop_signal.h): between batches the ranks of a replica agree
// whether any of them has been asked to stop (a max over the replica's control group, which they
// meet at every batch anyway). A replica that stops tells rank 0 (kStop, with the batch it was
// handed but gives back, if any) instead of asking for more; rank 0, once any replica stopped or
// it was asked itself, hands out no more batches, so every other replica ends after its current
// one. Rank 0 then writes every batch that was computed, in input order, up to the first one given
// back: done rows stay a prefix of the file, as --resume expects.
#include <cstdint>
#include <functional>
#include <map>
#include <vector>

#include "jobs/result_writer.h"
#include "mpi_comm/parallel_groups.h"

namespace lowsync {

struct Batch {
  int64_t first_row = 0, end_row = 0;
};

class WorkQueue {
 public:
  // writer: non-null on world rank 0 only.
  WorkQueue(ParallelGroups& groups, std::vector<Batch> batches, ResultWriter* writer);

  // Runs `compute` on the batches this replica gets, until none are left or the run is stopped;
  // on world rank 0, `on_written` is called after each append with the rows written so far and
  // the rows just written (from row rows_done - rows.size()).
  void run(const std::function<std::vector<RowResult>(const Batch&)>& compute,
           const std::function<void(int64_t, const std::vector<RowResult>&)>& on_written);

  // The same, step by step, for a replica that keeps several batches in flight (continuous
  // batching): every rank of the replica calls take() together (-1: none left, or the run stops),
  // complete() each batch it took (in any order; only the leader's results count), then finish().
  void set_on_written(const std::function<void(int64_t, const std::vector<RowResult>&)>& f) { on_written_ = f; }
  int64_t take();
  void complete(int64_t index, std::vector<RowResult> results);
  // World rank 0, between its passes: answers the requests and takes the results that have
  // arrived, so that no replica idles until rank 0's own batch ends (no-op elsewhere).
  void answer_arrived();
  void finish();
  const Batch& batch(int64_t index) const { return batches_[index]; }

  // World rank 0: asked before each batch is handed out (to any replica), with the queue's batches:
  // how many of its first rows to hand out. Fewer than it has: the batch is cut there and the rest
  // becomes the next batch (the assignment carries the rows, so other replicas learn the cut).
  // 0 keeps it and every later batch back (one-way: the runtime planner's tp tail runs them, with
  // another queue); the queue then ends as if they were none: replicas finish what they hold;
  // rank 0 writes it.
  void set_hand_out_rule(const std::function<int64_t(int64_t, const std::vector<Batch>&)>& f) { hand_out_ = f; }
  // World rank 0: called as each batch's results arrive (its own replica's and the others').
  void set_on_result(const std::function<void(int64_t)>& f) { on_result_ = f; }
  // World rank 0, after finish: the first input row not handed out; -1: none held back.
  int64_t first_row_held_back() const {
    return held_back_ && next_ < static_cast<int64_t>(batches_.size()) ? batches_[next_].first_row : -1;
  }

  // After run: the stop signal that ended it early on some replica that rank 0 heard from (0: none).
  // Meaningful on world rank 0; other replicas may have ended without knowing why.
  int stopped_by() const { return stopped_by_; }

 private:
  int64_t take_next_on_root();
  int64_t next_for_replica();  // agreed within the replica's tp group
  void serve_requests(bool block);
  void deliver(int64_t index, std::vector<RowResult> results);
  void stop_on_root(int sig);

  ParallelGroups& g_;
  std::vector<Batch> batches_;
  ResultWriter* writer_;
  int64_t next_ = 0;                                    // root: next batch not handed out
  int64_t written_ = 0;                                 // root: batches appended so far
  int leaders_left_ = 0;                                // root: other leaders not yet told "no more" or stopped
  int64_t outstanding_ = 0;                             // root: batches handed to others, results not yet in
  int64_t first_given_back_ = -1;                       // root: lowest batch a stopping replica gave back
  int stopped_by_ = 0;                                  // root: the signal that stopped the run
  std::map<int64_t, std::vector<RowResult>> pending_;  // root: results waiting for earlier batches
  std::function<void(int64_t, const std::vector<RowResult>&)> on_written_;
  std::function<int64_t(int64_t, const std::vector<Batch>&)> hand_out_;  // root: the runtime planner's rule
  std::function<void(int64_t)> on_result_;
  bool held_back_ = false;                              // root: the rule kept the rest back
  bool asked_ = false;                                  // leader: a request is outstanding
  std::vector<char> outbox_;                            // leader: results on their way to rank 0
  MPI_Request outbox_request_ = MPI_REQUEST_NULL;
};

}  // namespace lowsync
