#include "jobs/stage_link.h"

#include <cstring>

#include "jobs/result_bytes.h"

namespace lowsync {

namespace {
// Tags: micro-batch m's activations and tokens; a batch's results.
constexpr int kActivations = 1 << 20, kTokens = 2 << 20, kResults = 3 << 20;
}  // namespace

StageLink::~StageLink() {
  for (InFlight& f : in_flight_) pp_.wait(f.request);
}

void StageLink::isend(std::vector<char> bytes, int dest, int tag) {
  retire_completed();
  in_flight_.push_back({MPI_REQUEST_NULL, std::move(bytes)});
  InFlight& f = in_flight_.back();
  f.request = pp_.isend(f.bytes.data(), static_cast<int64_t>(f.bytes.size()), dest, tag);
}

// Frees the buffers of sends that have completed, oldest first (they complete in order per peer).
void StageLink::retire_completed() {
  while (!in_flight_.empty()) {
    if (!pp_.test(in_flight_.front().request)) return;
    in_flight_.pop_front();
  }
}

void StageLink::send_activations(int m, const Tensor& x) {
  std::vector<char> bytes(x.numel() * sizeof(float));
  be_.to_host(x, reinterpret_cast<float*>(bytes.data()));
  isend(std::move(bytes), stage() + 1, kActivations + m);
}

Tensor StageLink::receive_activations(int m, int64_t rows, int64_t cols) {
  std::vector<float> host(rows * cols);
  pp_.recv(host.data(), static_cast<int64_t>(host.size() * sizeof(float)), stage() - 1, kActivations + m);
  Tensor x = be_.scratch(rows, cols);
  be_.from_host(host.data(), x);
  return x;
}

void StageLink::send_tokens(int m, const std::vector<int32_t>& tokens) {
  for (int s = 0; s < stages() - 1; ++s) {
    std::vector<char> bytes(tokens.size() * sizeof(int32_t));
    std::memcpy(bytes.data(), tokens.data(), bytes.size());
    isend(std::move(bytes), s, kTokens + m);
  }
}

std::vector<int32_t> StageLink::receive_tokens(int m, size_t n) {
  std::vector<int32_t> tokens(n);
  pp_.recv(tokens.data(), static_cast<int64_t>(n * sizeof(int32_t)), stages() - 1, kTokens + m);
  return tokens;
}

// Non-blocking: under continuous batching the first stage takes a batch's results only when it
// reaches the point where the batch ends, after passes that may need this stage to go on.
void StageLink::send_results(const std::vector<RowResult>& rows) {
  std::vector<char> bytes = pack_results(0, rows);
  const int64_t n = static_cast<int64_t>(bytes.size());
  std::vector<char> size(sizeof n);
  std::memcpy(size.data(), &n, sizeof n);
  isend(std::move(size), 0, kResults);
  isend(std::move(bytes), 0, kResults);
}

std::vector<RowResult> StageLink::receive_results() {
  int64_t n = 0;
  pp_.recv(&n, sizeof n, stages() - 1, kResults);
  std::vector<char> bytes(n);
  pp_.recv(bytes.data(), n, stages() - 1, kResults);
  int64_t index = 0;
  return unpack_results(bytes, index);
}

}  // namespace lowsync
