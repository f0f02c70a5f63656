#include "layers/peer_pool.h"

#include <mpi.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "io/error.h"

namespace lowsync {

namespace {

// LayerWeights' tensors, in the order they travel.
constexpr Tensor LayerWeights::*kTensors[] = {
    &LayerWeights::norm1_w, &LayerWeights::norm1_b, &LayerWeights::wq,      &LayerWeights::bq,
    &LayerWeights::wk,      &LayerWeights::bk,      &LayerWeights::wv,      &LayerWeights::bv,
    &LayerWeights::wo,      &LayerWeights::bo,      &LayerWeights::norm2_w, &LayerWeights::norm2_b,
    &LayerWeights::w_gate,  &LayerWeights::w_up,    &LayerWeights::b_up,    &LayerWeights::w_down,
    &LayerWeights::b_down};

struct TensorHeader {
  int64_t present, rows, cols, dtype;
};

// Where the next piece starts: 64-byte steps, so every tensor starts as aligned as the buffer.
size_t aligned(size_t n) { return (n + 63) / 64 * 64; }

}  // namespace

std::vector<std::byte> pack_layer(const LayerWeights& w) {
  size_t size = 0;
  for (auto member : kTensors) {
    const Tensor& t = w.*member;
    size = aligned(size + sizeof(TensorHeader));
    if (!t.empty()) size = aligned(size + t.bytes());
  }
  std::vector<std::byte> out(size);
  size_t at = 0;
  for (auto member : kTensors) {
    const Tensor& t = w.*member;
    const TensorHeader h{!t.empty(), t.rows, t.cols, static_cast<int64_t>(t.dtype)};
    std::memcpy(out.data() + at, &h, sizeof h);
    at = aligned(at + sizeof h);
    if (t.empty()) continue;
    std::memcpy(out.data() + at, t.ptr, t.bytes());
    at = aligned(at + t.bytes());
  }
  return out;
}

LayerWeights unpack_layer(std::shared_ptr<std::vector<std::byte>> bytes) {
  LayerWeights w;
  size_t at = 0;
  for (auto member : kTensors) {
    TensorHeader h;
    if (at + sizeof h > bytes->size()) throw std::runtime_error("peer pool: a layer message ends inside a header");
    std::memcpy(&h, bytes->data() + at, sizeof h);
    at = aligned(at + sizeof h);
    if (!h.present) continue;
    Tensor& t = w.*member;
    t.rows = h.rows;
    t.cols = h.cols;
    t.dtype = static_cast<DType>(h.dtype);
    if (at + t.bytes() > bytes->size()) throw std::runtime_error("peer pool: a layer message ends inside a tensor");
    t.ptr = bytes->data() + at;
    t.storage = std::shared_ptr<void>(bytes, t.ptr);  // keeps the whole message alive
    at = aligned(at + t.bytes());
  }
  return w;
}

PeerLayers::~PeerLayers() {
  try {
    link_.ask(holder_, -1);
  } catch (const std::exception&) {
    // The job is ending; a holder that cannot hear this stops with it.
  }
}

std::shared_ptr<std::vector<std::byte>> PeerLayers::free_buffer() {
  for (const auto& b : buffers_)
    if (b.use_count() == 1) return b;  // only this list holds it: no layer's tensors view it
  return buffers_.emplace_back(std::make_shared<std::vector<std::byte>>());
}

LayerWeights PeerLayers::load(int layer) {
  std::shared_ptr<std::vector<std::byte>> bytes = free_buffer();
  link_.ask(holder_, layer);
  link_.receive(holder_, *bytes);
  bytes_ += static_cast<int64_t>(bytes->size());
  return unpack_layer(std::move(bytes));
}

PeerPoolServer::PeerPoolServer(const ModelConfig& cfg, Backend& be, PoolLink& link, const std::vector<Peer>& peers)
    : link_(link), peers_(static_cast<int>(peers.size())) {
  for (const Peer& p : peers) {
    LayerSource checkpoint(cfg, p.share, be);
    for (int l = p.layers.begin; l < p.layers.end(); ++l) {
      std::vector<std::byte>& packed = held_[{p.rank, l}] = pack_layer(checkpoint.load(l));
      held_bytes_ += static_cast<int64_t>(packed.size());
    }
  }
  thread_ = std::thread([this] { serve(); });
}

PeerPoolServer::~PeerPoolServer() {
  if (std::uncaught_exceptions() > 0) quit_ = true;
  thread_.join();
}

// Answers requests until every peer has said it asks no more. An error here (an MPI failure, a
// request for a layer this rank does not hold) stops the job: the asking rank would wait forever.
void PeerPoolServer::serve() {
  try {
    for (int done = 0; done < peers_;) {
      const PoolLink::Request r = link_.next_request(quit_);
      if (r.from < 0) return;  // quit: the job is failing
      if (r.layer < 0) {
        ++done;
        continue;
      }
      const auto held = held_.find({r.from, r.layer});
      if (held == held_.end())
        throw std::runtime_error("rank " + std::to_string(r.from) + " asked for layer " + std::to_string(r.layer) +
                                 ", which this rank does not hold for it");
      link_.send(r.from, held->second);
    }
  } catch (const std::exception& e) {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "lowsync: error: rank %d: memory.pool peer: %s; stopping every rank\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
}

}  // namespace lowsync
