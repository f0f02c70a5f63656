#pragma once
// Peer memory pooling (memory.pool: peer). A rank whose layers do not all fit under its
// memory.limit streams the rest from a peer rank's memory instead of the host's page cache: the
// peer (its holder, Plan::pool_holder) read them from the checkpoint at load and keeps them; the
// streaming rank's read-ahead thread (Transformer::prefetch) asks for each one layer ahead of use
// and receives it as one message, while the holder's serving thread answers whatever the holder
// itself computes meanwhile (the transfer's design: mpi_comm/pool_link.h). CPU backend only: a
// received layer's tensors view the message's host memory.
#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "layers/model.h"
#include "mpi_comm/pool_link.h"

namespace lowsync {

// A layer's tensors as one buffer: for each tensor of LayerWeights, in member order, a header
// (present, rows, cols, dtype) and its stored bytes. unpack_layer's tensors view `bytes` (and keep
// it alive): no copy.
std::vector<std::byte> pack_layer(const LayerWeights& w);
LayerWeights unpack_layer(std::shared_ptr<std::vector<std::byte>> bytes);

// The streaming side: this rank's share of a layer, from its holder's memory.
class PeerLayers {
 public:
  PeerLayers(PoolLink& link, int holder) : link_(link), holder_(holder) {}
  ~PeerLayers();                 // tells the holder this rank asks no more
  LayerWeights load(int layer);  // from one thread at a time (the read-ahead)
  int64_t bytes_loaded() const { return bytes_; }
  int holder() const { return holder_; }

 private:
  std::shared_ptr<std::vector<std::byte>> free_buffer();
  PoolLink& link_;
  int holder_;
  std::atomic<int64_t> bytes_{0};
  // Received layers' buffers, reused once no tensor views them any more (the layer in use and the
  // one being read: two, as the plan counts), so that a fetch allocates and faults in no memory.
  std::vector<std::shared_ptr<std::vector<std::byte>>> buffers_;
};

// The holder's side: the layers it keeps for its peers, and the thread that sends them.
class PeerPoolServer {
 public:
  struct Peer {
    int rank = 0;       // world rank of the streaming peer
    LayerShare share;   // its share of each layer
    Span layers;        // the layers it streams
  };
  // Reads every peer's streamed layers (its share of each) from the checkpoint into this rank's
  // memory, then starts serving them.
  PeerPoolServer(const ModelConfig& cfg, Backend& be, PoolLink& link, const std::vector<Peer>& peers);
  // Waits until every peer has said it asks no more (at once when an exception is unwinding: the
  // job is failing, and a peer may never say so).
  ~PeerPoolServer();
  int64_t bytes_held() const { return held_bytes_; }
  int64_t bytes_served() const { return link_.bytes_sent(); }

 private:
  void serve();
  PoolLink& link_;
  std::map<std::pair<int, int>, std::vector<std::byte>> held_;  // (peer rank, layer) -> packed layer
  int64_t held_bytes_ = 0;
  int peers_ = 0;
  std::atomic<bool> quit_{false};
  std::thread thread_;
};

}  // namespace lowsync
