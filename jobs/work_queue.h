#pragma once
// Data parallelism: replicas take batches dynamically and world rank 0 writes every result.
// World rank 0 hands out batch indices (its own replica takes the next one between its batches);
// each other replica's leader asks for its next batch before computing the current one, so a
// replica that finishes has its next batch at hand, and ships its results to rank 0, which
// appends them to the output file in input order.
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

  // Runs `compute` on the batches this replica gets, until none are left; on world rank 0,
  // `on_written` is called after each append with the rows written so far.
  void run(const std::function<std::vector<RowResult>(const Batch&)>& compute,
           const std::function<void(int64_t)>& on_written);

 private:
  int64_t take_next_on_root();
  int64_t next_for_replica();  // agreed within the replica's tp group
  void serve_requests(bool block);
  void deliver(int64_t index, std::vector<RowResult> results);

  ParallelGroups& g_;
  std::vector<Batch> batches_;
  ResultWriter* writer_;
  int64_t next_ = 0;                                    // root: next batch not handed out
  int64_t written_ = 0;                                 // root: batches appended so far
  int leaders_left_ = 0;                                // root: other leaders not yet told "no more"
  std::map<int64_t, std::vector<RowResult>> pending_;  // root: results waiting for earlier batches
  std::function<void(int64_t)> on_written_;
  bool asked_ = false;                                  // leader: a request is outstanding
  std::vector<char> outbox_;                            // leader: results on their way to rank 0
  MPI_Request outbox_request_ = MPI_REQUEST_NULL;
};

}  // namespace lowsync
