#pragma once
// A transformer of one of the supported families, this rank's share of its weights on a backend,
// and its forward pass over a packed batch. Blocks are written out per family shape: pre-LN
// decoder (LLaMA, GPT-2), the same with its attention sync dropped (SPD), and post-LN encoder (BERT).
#include <atomic>
#include <future>
#include <memory>
#include <vector>

#include "io/model_config.h"
#include "layers/backend.h"
#include "layers/layer_share.h"
#include "layers/logit_summary.h"
#include "layers/tensor_taps.h"
#include "layers/tensor_parallel.h"

namespace lowsync {

struct LayerWeights {
  Tensor norm1_w, norm1_b;  // before attention (pre-LN) or after it (BERT's attention.output.LayerNorm)
  Tensor wq, bq, wk, bk, wv, bv, wo, bo;  // this rank's heads; wo: its columns, bo: whole
  Tensor norm2_w, norm2_b;  // before the FFN (pre-LN) or after it (BERT's output.LayerNorm)
  Tensor w_gate, w_up, b_up, w_down, b_down;  // this rank's FFN columns; b_down: whole
};

struct ModelWeights {
  Tensor tok_emb, pos_emb, type_emb;  // pos: GPT-2, BERT; type: BERT
  Tensor emb_norm_w, emb_norm_b;      // BERT's embeddings.LayerNorm
  std::vector<LayerWeights> layers;   // this rank's TP share of each layer of its stage (decoupled: coupled ones)
  std::vector<std::vector<LayerWeights>> sub_blocks;  // decoupled model: [layer][this rank's sub-blocks] (coupled: none)
  Tensor final_norm_w, final_norm_b;  // LLaMA's norm, GPT-2's ln_f
  Tensor lm_head;                     // [head rows, hidden]: the whole vocabulary's or this rank's rows
                                      // of a split head; the token embedding (its rows) when tied
  int64_t bytes = 0;                  // fp32 bytes this rank copied out of the checkpoint
};

// The heads and FFN columns one rank computes in a block: its tensor-parallel share of a layer, or
// one whole sub-block of a decoupled layer.
struct BlockShape {
  int n_heads = 0, n_kv_heads = 0, intermediate = 0, head_dim = 0;
  int group = 1, q_offset = 0;  // see AttentionHeads
  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  AttentionHeads attention_heads() const { return {n_heads, n_kv_heads, head_dim, group, q_offset}; }
  static BlockShape of_share(const ModelConfig& cfg, const LayerShare& share);
  static BlockShape sub_block(const ModelConfig& cfg, int r);
};

// Reads this rank's share of the Hugging Face checkpoint of cfg.dir and uploads it to the backend.
// `layers`: this rank's pipeline stage, of which the first `resident` layers are read now (the
// others are streamed in during each pass, see LayerSource). The first stage also reads the
// embeddings, the last the final norm and the LM head: the vocabulary rows `head` of it (count 0:
// all of them).
ModelWeights load_weights(const ModelConfig& cfg, const LayerShare& share, const Span& layers, int resident,
                          Backend& be, Span head = {});

// One layer of this rank's share at a time, read from the memory-mapped checkpoint when it is
// needed (peer memory pooling with the host's page cache as the pool: layers beyond a rank's
// memory.limit stay there and are fetched one layer ahead of use). Ordinary models only.
class LayerSource {
 public:
  LayerSource(const ModelConfig& cfg, const LayerShare& share, Backend& be);
  ~LayerSource();
  LayerWeights load(int layer);  // safe to call from one background thread at a time
  int64_t bytes_loaded() const { return bytes_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::atomic<int64_t> bytes_{0};
};

class PeerLayers;  // layers/peer_pool.h

class Transformer {
 public:
  // `share`: the part of every layer this rank computes and `layers` its pipeline stage (both the
  // Plan's); spd_drop[l]: layer l skips its attention all-reduce (Sync-Point Drop); empty = none.
  // `resident`: how many of the stage's layers are held in memory (the rest are streamed from the
  // checkpoint one layer ahead of use); -1: all. `head`: the output head split over the group's
  // ranks, [tp rank] its vocabulary rows (the Plan's); empty: every rank computes the whole head.
  Transformer(const ModelConfig& cfg, Backend& be, TensorParallelGroup tp, const LayerShare& share, const Span& layers,
              std::vector<bool> spd_drop = {}, int resident = -1, std::vector<Span> head = {});
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;
  // The whole model on one rank.
  Transformer(const ModelConfig& cfg, Backend& be)
      : Transformer(cfg, be, {}, LayerShare::whole(cfg), {0, cfg.n_layers}) {}
  // The model `whole` holds (every layer, whole: an ordinary model on one rank) computed as
  // tensor-parallel share `share` over `tp`, from views of whole's weights (layers/weight_views.h);
  // no checkpoint read. The runtime planner's tp tail; `whole` must outlive it.
  Transformer(const Transformer& whole, TensorParallelGroup tp, const LayerShare& share);

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return be_; }
  TensorParallelGroup& tp() { return tp_; }

  // Runs the batch's new tokens through every layer, appending their keys/values to the cache.
  // Returns the last hidden state [tokens, hidden] (after the final norm for decoders). A single
  // stage's model only: a pipeline stage calls the three parts below itself.
  Tensor forward(const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache);
  Tensor embed(const std::vector<int32_t>& tokens, const BatchLayout& layout);  // first stage
  void run_layers(Tensor& x, const BatchLayout& layout, KVCache& cache);       // this stage's layers
  void finish(Tensor& x);                                                        // last stage: final norm
  bool first_stage() const { return layers_.begin == 0; }
  bool last_stage() const { return layers_.end() == cfg_.n_layers; }
  // Next-token logits [rows.size(), vocab] of the chosen rows of a hidden state (last stage). With a
  // split head every rank computes its vocabulary rows and the whole rows are gathered.
  Tensor logits(const Tensor& hidden, const std::vector<int64_t>& rows);
  // The same rows' argmax and normaliser (with the logit of targets[i] when targets is not empty),
  // for tasks that need no more of a row: with a split head each rank summarises its vocabulary
  // rows and the summaries are gathered (a few numbers per row) and merged.
  std::vector<LogitSummary> logit_summaries(const Tensor& hidden, const std::vector<int64_t>& rows,
                                            const std::vector<int32_t>& targets = {});
  bool head_split() const { return !head_.empty(); }
  KVCache make_cache(int64_t capacity);
  // Which layers drop their attention sync; may change between forwards (calibration does).
  void set_spd_drop(std::vector<bool> drop);
  const std::vector<bool>& spd_drop() const { return spd_drop_; }
  // Work done so far, for the run report.
  int64_t forward_passes() const { return passes_; }
  int64_t tokens_processed() const { return tokens_; }
  int64_t weight_bytes() const { return w_.bytes; }
  // memory.pool: peer: the layers this rank does not hold come from `peer` (a holder rank's memory)
  // instead of the checkpoint. Before the first pass.
  void stream_from(std::unique_ptr<PeerLayers> peer);
  // Streamed layers: bytes read from the checkpoint (or received from the holder) during passes, and
  // seconds a pass waited for one.
  int64_t streamed_bytes() const;
  double stream_stall_seconds() const { return stall_s_; }
  // `debug.dump`: the named intermediate tensors of this rank's first pass are copied into `taps`
  // (null: none, the default; a tap then costs one branch).
  void set_taps(TensorTaps* taps) { taps_ = taps; }

 private:
  void norm(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& out);
  const LayerWeights& layer_weights(int l);  // held, or streamed in (and the next one asked for)
  void prefetch(int l);
  void decoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache);
  void decoder_block_spd(int l, Tensor& x, const BatchLayout& layout, KVCache& cache);
  void encoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache);
  void decoupled_segment(int first, int last, Tensor& x, const BatchLayout& layout, KVCache& cache);
  int cache_slot(int l, int j = 0) const;  // the KV cache slot of layer l (its sub-block j, decoupled)
  void decoupled_block(const LayerWeights& w, const BlockShape& s, int cache_layer, Tensor& x_r,
                       const BatchLayout& layout, KVCache& cache);
  // tap_layer: the model layer whose Q/K/V are tapped (-1: a decoupled sub-block, not tapped).
  Tensor attention_partial(const LayerWeights& w, const BlockShape& s, int cache_layer, const Tensor& h,
                           const BatchLayout& layout, KVCache& cache, int tap_layer = -1);
  Tensor ffn_partial(const LayerWeights& w, const BlockShape& s, const Tensor& h);
  void add_bias(Tensor& x, const Tensor& bias);
  Span head_rows() const;  // this rank's vocabulary rows of the head
  Tensor head_logits(const Tensor& hidden, const std::vector<int64_t>& rows);  // [rows, head_rows().count]
  // Tensor `blk.{l}.{what}` (l >= 0) or `what` (l < 0) for debug.dump, during the tapped pass only.
  // `share`: the tensor is this rank's share (suffix .tp{r} under TP); whole tensors are taken on
  // TP rank 0 only.
  void tap(int l, const char* what, const Tensor& t, bool share = false);

  ModelConfig cfg_;
  Backend& be_;
  TensorParallelGroup tp_;  // the ranks of this replica: TP shares, or a decoupled model's sub-blocks
  Span layers_;             // this rank's pipeline stage
  BlockShape local_;        // this rank's TP share (of a decoupled model: of its coupled layers)
  std::vector<BlockShape> sub_shapes_;  // decoupled model: this rank's sub-blocks
  std::vector<bool> spd_drop_;
  std::vector<float> rope_inv_freq_;  // scaled RoPE's frequencies (empty: unscaled, from rope_theta)
  std::vector<Span> head_;            // [tp rank]: vocabulary rows of a split head; empty: not split
  std::vector<float> head_host_, gathered_;              // a split head's logits on the host
  std::vector<double> summaries_, gathered_summaries_;   // and its rows' summaries
  ModelWeights w_;
  int64_t passes_ = 0, tokens_ = 0;
  int resident_ = 0;                      // layers [layers_.begin, layers_.begin + resident_) are held
  std::unique_ptr<LayerSource> source_;   // the others come from here
  std::unique_ptr<PeerLayers> peer_;      // or from a peer's memory (memory.pool: peer)
  std::future<LayerWeights> next_;        // the streamed layer being read ahead
  int next_layer_ = -1;
  LayerWeights streamed_;                 // the streamed layer in use
  double stall_s_ = 0;
  TensorTaps* taps_ = nullptr;
  bool tap_pass_ = false;                 // the current pass is the tapped one (this rank's first)
};

}  // namespace lowsync
