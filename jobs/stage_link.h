#pragma once
// What flows between the pipeline stages of one replica (EnergonAI-style, non-blocking): a stage's
// output activations to the next stage, and each new token the last stage sampled back to every
// earlier stage (the first embeds it in the next pass; all of them keep the same record of which
// rows still run). Sends are non-blocking, so a stage computes its next micro-batch while its
// last output is on the wire; a stage waits only for data it needs now. Messages of micro-batch m
// carry tags of their own, and MPI keeps each pair's messages of one tag in order.
// With one stage nothing is sent: a StageLink over a one-rank `pp` group is free.
#include <cstdint>
#include <deque>
#include <vector>

#include "jobs/result_writer.h"
#include "layers/backend.h"
#include "mpi_comm/communicator.h"

namespace lowsync {

class StageLink {
 public:
  StageLink(Communicator& pp, Backend& be) : pp_(pp), be_(be) {}
  ~StageLink();  // waits for every send still in flight

  int stage() const { return pp_.rank(); }
  int stages() const { return pp_.size(); }
  bool first() const { return stage() == 0; }
  bool last() const { return stage() == stages() - 1; }

  // x [rows, hidden] of micro-batch m to the next stage; returns at once.
  void send_activations(int m, const Tensor& x);
  // The previous stage's activations of micro-batch m, [rows, cols].
  Tensor receive_activations(int m, int64_t rows, int64_t cols);
  // Last stage: the tokens just sampled for micro-batch m's running rows, to every earlier stage.
  void send_tokens(int m, const std::vector<int32_t>& tokens);
  std::vector<int32_t> receive_tokens(int m, size_t n);
  // Last stage -> first: a batch's results (only the last stage has score's and embed's results,
  // and generate's log-probs); returns at once.
  void send_results(const std::vector<RowResult>& rows);
  std::vector<RowResult> receive_results();

 private:
  // A send in flight and the buffer it reads from, kept until it completes.
  struct InFlight {
    MPI_Request request;
    std::vector<char> bytes;
  };
  void isend(std::vector<char> bytes, int dest, int tag);
  void retire_completed();

  Communicator& pp_;
  Backend& be_;
  std::deque<InFlight> in_flight_;
};

}  // namespace lowsync
