#include "layers/model.h"

#include <algorithm>
#include <chrono>

#include "io/error.h"
#include "layers/peer_pool.h"
#include "layers/rope_frequencies.h"
#include "layers/weight_views.h"
#include "mpi_comm/watchdog.h"

namespace lowsync {

BlockShape BlockShape::of_share(const ModelConfig& cfg, const LayerShare& share) {
  const int group = cfg.n_heads / cfg.n_kv_heads;
  return {share.heads.count, share.kv_heads.count, share.ffn.count, cfg.head_dim, group,
          share.heads.begin - share.kv_heads.begin * group};
}

BlockShape BlockShape::sub_block(const ModelConfig& cfg, int r) {
  return {cfg.bp.heads[r], cfg.bp.kv_heads[r], cfg.bp.ffn[r], cfg.head_dim, cfg.bp.heads[r] / cfg.bp.kv_heads[r], 0};
}

namespace {
// The first thing this model needs that only backends with the extended kernels have, or null.
const char* needs_extended_kernels(const ModelConfig& c) {
  if (c.sliding_window > 0) return "sliding-window attention";
  if (c.rope_scaling.type != RopeScaling::Type::None) return "scaled RoPE (rope_scaling)";
  if (c.gated_ffn() && c.activation != Activation::SiLU) return "a GELU-gated FFN (GeGLU)";
  if (c.embed_scale != 1.f) return "scaled token embeddings";
  if (c.bp.enabled() && c.bp.merge == DecoupledSpec::Merge::Mean) return "the mean merge of decoupled streams (bp.merge)";
  return nullptr;
}
}  // namespace

Transformer::Transformer(const ModelConfig& cfg, Backend& be, TensorParallelGroup tp, const LayerShare& share,
                         const Span& layers, std::vector<bool> spd_drop, int resident, std::vector<Span> head)
    : cfg_(cfg), be_(be), tp_(tp), layers_(layers), head_(std::move(head)) {
  if (!head_.empty() && static_cast<int>(head_.size()) != tp_.size())
    throw UserError(cfg.dir + ": the output head is split " + std::to_string(head_.size()) + " ways for a group of " +
                    std::to_string(tp_.size()) + " ranks");
  if (const char* what = needs_extended_kernels(cfg); what && !be.has_extended_kernels())
    throw UserError(cfg.dir + ": " + cfg.architecture + " needs " + what + ", which backend " + be.name() +
                    " does not implement yet; use backend: cpu");
  if (cfg.rope_scaling.type != RopeScaling::Type::None) rope_inv_freq_ = rope_inv_freq(cfg);
  if (cfg.bp.enabled()) {
    for (int r = share.sub_blocks.begin; r < share.sub_blocks.end(); ++r) sub_shapes_.push_back(BlockShape::sub_block(cfg, r));
    if (!cfg.bp.coupled.empty()) local_ = BlockShape::of_share(cfg, share.coupled_share(cfg));
  } else {
    local_ = BlockShape::of_share(cfg, share);
  }
  resident_ = resident < 0 || cfg.bp.enabled() ? layers.count : std::min(resident, layers.count);
  w_ = load_weights(cfg, share, layers, resident_, be, head_rows());
  if (resident_ < layers.count) source_ = std::make_unique<LayerSource>(cfg, share, be);
  set_spd_drop(std::move(spd_drop));
}

Transformer::Transformer(const Transformer& whole, TensorParallelGroup tp, const LayerShare& share)
    : cfg_(whole.cfg_), be_(whole.be_), tp_(tp), layers_(whole.layers_), local_(BlockShape::of_share(whole.cfg_, share)),
      rope_inv_freq_(whole.rope_inv_freq_) {
  if (cfg_.bp.enabled() || whole.tp_.size() > 1 || whole.layers_.count != cfg_.n_layers ||
      whole.resident_ < whole.layers_.count)
    throw UserError(cfg_.dir + ": a tensor-parallel share of held weights needs every layer held whole on the rank "
                    "(an ordinary model, no tp, pp or streamed layers)");
  w_ = whole.w_;  // embeddings, final norm and LM head: the same tensors
  w_.bytes = 0;   // this copy's own bytes: the row-parallel columns
  for (size_t l = 0; l < whole.w_.layers.size(); ++l)
    w_.layers[l] = share_view(whole.w_.layers[l], cfg_, share, be_, w_.bytes);
  resident_ = layers_.count;
  set_spd_drop({});
}

Transformer::~Transformer() {
  if (next_.valid()) next_.wait();  // a read-ahead still running uses this object's source
}

void Transformer::stream_from(std::unique_ptr<PeerLayers> peer) {
  source_.reset();  // the checkpoint's mapping is not needed any more
  peer_ = std::move(peer);
}

int64_t Transformer::streamed_bytes() const {
  return source_ ? source_->bytes_loaded() : peer_ ? peer_->bytes_loaded() : 0;
}

// Starts reading (or asking the holder for) streamed layer l in the background.
void Transformer::prefetch(int l) {
  next_layer_ = l;
  next_ = std::async(std::launch::async, [this, l] { return peer_ ? peer_->load(l) : source_->load(l); });
}

// Layer l's weights: held ones directly; a streamed one from the read-ahead (waiting for it only if
// it is not there yet: that wait is the stall the run report shows), starting the next streamed
// layer's read (after the stage's last, the first streamed one again, for the next pass).
const LayerWeights& Transformer::layer_weights(int l) {
  const int local = l - layers_.begin;
  if (local < resident_) return w_.layers[local];
  if (next_layer_ != l) prefetch(l);  // the first pass, or an order the read-ahead did not expect
  const auto t0 = std::chrono::steady_clock::now();
  // A wait on a holder is watched like an MPI call (mpi.timeout): a holder that stops answering
  // (stopped, its host frozen) would otherwise leave this rank waiting here for ever.
  static const std::string kPool = "pool";
  struct Watched {
    bool on;
    explicit Watched(bool o) : on(o) { if (on) watchdog::call_started(&kPool, "layer fetch"); }
    ~Watched() { if (on) watchdog::call_ended(); }
  };
  {
    const Watched watched(peer_ != nullptr);
    streamed_ = next_.get();
  }
  stall_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  prefetch(l + 1 < layers_.end() ? l + 1 : layers_.begin + resident_);
  return streamed_;
}

void Transformer::set_spd_drop(std::vector<bool> drop) {
  drop.resize(cfg_.n_layers, false);
  for (bool d : drop) {
    if (d && !cfg_.is_decoder())
      throw UserError(cfg_.dir + ": Sync-Point Drop needs a pre-LN decoder (llama, gpt2); " + cfg_.architecture +
                      " is a post-LN encoder, whose LayerNorm after attention needs the full sum");
    if (d && cfg_.bp.enabled())
      throw UserError(cfg_.dir + ": Sync-Point Drop applies to tensor parallelism; this decoupled model already syncs "
                      "once every " + std::to_string(cfg_.bp.sync_every) + " layers");
  }
  spd_drop_ = std::move(drop);
}

KVCache Transformer::make_cache(int64_t capacity) {
  if (!cfg_.bp.enabled()) return be_.make_kv_cache(layers_.count, capacity, local_.kv_dim());
  // A decoupled model: one slot per (layer, local sub-block) (see cache_slot), each as wide as its
  // sub-block's keys; a coupled layer's first slot holds its TP share's keys, its others stay empty.
  const int n_local = static_cast<int>(sub_shapes_.size());
  KVCache cache;
  cache.capacity = capacity;
  for (int l = 0; l < cfg_.n_layers; ++l)
    for (int j = 0; j < n_local; ++j) {
      const bool coupled = cfg_.bp.is_coupled(l);
      const int kv_dim = coupled ? (j == 0 ? local_.kv_dim() : 0) : sub_shapes_[j].kv_dim();
      if (kv_dim == 0) {  // a coupled layer's unused slot
        cache.k.emplace_back();
        cache.v.emplace_back();
        continue;
      }
      KVCache slot = be_.make_kv_cache(1, capacity, kv_dim);
      cache.k.push_back(slot.k[0]);
      cache.v.push_back(slot.v[0]);
    }
  return cache;
}

// Where layer l (sub-block j of this rank's, for a decoupled layer) keeps its keys and values: the
// stage's layers in order for an ordinary model; n_local slots per layer for a decoupled one.
int Transformer::cache_slot(int l, int j) const {
  if (!cfg_.bp.enabled()) return l - layers_.begin;
  return l * static_cast<int>(sub_shapes_.size()) + j;
}

void Transformer::norm(const Tensor& x, const Tensor& w, const Tensor& b, Tensor& out) {
  if (cfg_.family == Family::Llama)
    be_.rmsnorm(x, w, cfg_.norm_eps, out);
  else
    be_.layernorm(x, w, b, cfg_.norm_eps, out);
}

void Transformer::tap(int l, const char* what, const Tensor& t, bool share) {
  if (!tap_pass_ || (!share && tp_.rank() != 0)) return;
  std::string name = l >= 0 ? "blk." + std::to_string(l) + "." + what : what;
  if (share && tp_.size() > 1) name += ".tp" + std::to_string(tp_.rank());
  taps_->take(name, be_, t);
}

// The bias of a row-parallel layer is added once, after the partial outputs are summed.
void Transformer::add_bias(Tensor& x, const Tensor& bias) {
  if (!bias.empty()) be_.add_bias(x, bias);
}

Tensor Transformer::forward(const std::vector<int32_t>& tokens, const BatchLayout& layout, KVCache& cache) {
  Tensor x = embed(tokens, layout);
  run_layers(x, layout, cache);
  finish(x);
  return x;
}

// The input of the first layer [tokens, hidden]: token (+ position, + token type) embeddings;
// Gemma's token embeddings times sqrt(hidden).
Tensor Transformer::embed(const std::vector<int32_t>& tokens, const BatchLayout& layout) {
  const int64_t T = layout.tokens();
  tap_pass_ = taps_ && passes_ == 0;
  if (tap_pass_) taps_->set_tokens(tokens);
  Tensor x = be_.scratch(T, cfg_.hidden);
  be_.embedding(w_.tok_emb, tokens, x, false);
  if (cfg_.embed_scale != 1.f) be_.scale(x, cfg_.embed_scale);
  if (!w_.pos_emb.empty()) be_.embedding(w_.pos_emb, layout.positions, x, true);
  if (cfg_.family == Family::Bert) {
    be_.embedding(w_.type_emb, std::vector<int32_t>(T, 0), x, true);  // token type 0 for every token
    norm(x, w_.emb_norm_w, w_.emb_norm_b, x);
  }
  tap(-1, "token_embd", x);
  return x;
}

// This rank's layers (its pipeline stage's) over the hidden state x [tokens, hidden], in place.
void Transformer::run_layers(Tensor& x, const BatchLayout& layout, KVCache& cache) {
  tap_pass_ = taps_ && passes_ == 0;
  if (tap_pass_) taps_->set_layout(layout);
  ++passes_;
  tokens_ += layout.tokens();
  if (cfg_.bp.enabled()) {
    // A decoupled model: segments of decoupled layers, each ending with its merge, and coupled
    // layers (ordinary tensor-parallel layers over the same ranks) between them.
    for (const DecoupledSpec::Segment& seg : cfg_.bp.segments(cfg_.n_layers)) {
      if (!seg.coupled)
        decoupled_segment(seg.first, seg.end, x, layout, cache);
      else if (cfg_.is_decoder())
        decoder_block(seg.first, x, layout, cache);
      else
        encoder_block(seg.first, x, layout, cache);
    }
    return;
  }
  for (int l = layers_.begin; l < layers_.end(); ++l) {
    if (!cfg_.is_decoder())
      encoder_block(l, x, layout, cache);
    else if (spd_drop_[l])
      decoder_block_spd(l, x, layout, cache);
    else
      decoder_block(l, x, layout, cache);
  }
}

// After the last layer: the decoders' final norm.
void Transformer::finish(Tensor& x) {
  if (!cfg_.is_decoder() || !last_stage()) return;
  norm(x, w_.final_norm_w, w_.final_norm_b, x);
  tap(-1, "result_norm", x);
}

// Pre-LN block:  x = x + Attn(norm1(x));  x = x + FFN(norm2(x))   (2 syncs)
void Transformer::decoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = layer_weights(l);
  Tensor h = be_.scratch(x.rows, x.cols);
  norm(x, w.norm1_w, w.norm1_b, h);
  tap(l, "attn_norm", h);
  Tensor a = attention_partial(w, local_, cache_slot(l), h, layout, cache, l);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  tap(l, "attn_out", a);
  be_.add(x, a);
  tap(l, "ffn_inp", x);
  norm(x, w.norm2_w, w.norm2_b, h);
  tap(l, "ffn_norm", h);
  Tensor m = ffn_partial(w, local_, h);
  tp_.all_reduce(m);
  add_bias(m, w.b_down);
  tap(l, "ffn_out", m);
  be_.add(x, m);
  tap(l, "l_out", x);
}

// The same block with its attention sync dropped (SPD, 1 sync): each rank carries on from its own
// attention partial a_r,  h_r = x + a_r + b_o,  m_r = FFN_r(norm2(h_r)),  then one all-reduce gives
// y = x + sum_r (a_r + m_r) + b_o + b_down.
void Transformer::decoder_block_spd(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = layer_weights(l);
  Tensor h = be_.scratch(x.rows, x.cols);
  norm(x, w.norm1_w, w.norm1_b, h);
  tap(l, "attn_norm", h);
  Tensor a = attention_partial(w, local_, cache_slot(l), h, layout, cache, l);
  Tensor h_r = be_.zeros(x.rows, x.cols);
  be_.add(h_r, x);
  be_.add(h_r, a);
  add_bias(h_r, w.bo);
  tap(l, "ffn_inp", h_r, true);
  norm(h_r, w.norm2_w, w.norm2_b, h);
  tap(l, "ffn_norm", h, true);
  Tensor m = ffn_partial(w, local_, h);
  be_.add(a, m);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  add_bias(a, w.b_down);
  be_.add(x, a);
  tap(l, "l_out", x);
}

// Post-LN block:  x = norm1(x + Attn(x));  x = norm2(x + FFN(x))   (2 syncs)
void Transformer::encoder_block(int l, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const LayerWeights& w = layer_weights(l);
  Tensor a = attention_partial(w, local_, cache_slot(l), x, layout, cache, l);
  tp_.all_reduce(a);
  add_bias(a, w.bo);
  tap(l, "attn_out", a);
  be_.add(x, a);
  norm(x, w.norm1_w, w.norm1_b, x);
  tap(l, "ffn_inp", x);
  Tensor m = ffn_partial(w, local_, x);
  tp_.all_reduce(m);
  add_bias(m, w.b_down);
  tap(l, "ffn_out", m);
  be_.add(x, m);
  norm(x, w.norm2_w, w.norm2_b, x);
  tap(l, "l_out", x);
}

// A segment of a decoupled model (layers [first, last)): each of this rank's sub-blocks runs the
// segment on its own stream x_r, starting from the merged x, with no communication; one
// all-reduce then merges the streams (DecoupledSpec::Merge):
//   delta:  x = x + sum_r (x_r - x)        mean:  x = (1/P) sum_r x_r
void Transformer::decoupled_segment(int first, int last, Tensor& x, const BatchLayout& layout, KVCache& cache) {
  const int n_local = static_cast<int>(sub_shapes_.size());
  const bool mean = cfg_.bp.merge == DecoupledSpec::Merge::Mean;
  Tensor merged = be_.zeros(x.rows, x.cols);  // this rank's sum_r x_r (mean) or sum_r (x_r - x) (delta)
  for (int j = 0; j < n_local; ++j) {
    Tensor x_r = be_.zeros(x.rows, x.cols);
    be_.add(x_r, x);
    for (int l = first; l < last; ++l)
      decoupled_block(w_.sub_blocks[l][j], sub_shapes_[j], cache_slot(l, j), x_r, layout, cache);
    be_.add(merged, x_r);
    if (!mean) be_.axpy(-1.f, x, merged);
  }
  tp_.all_reduce(merged);
  if (mean) {
    be_.scale(merged, 1.f / static_cast<float>(cfg_.bp.sub_blocks));
    be_.axpy(-1.f, x, merged);  // x += (mean - x): x becomes the mean, in place
  }
  be_.add(x, merged);
  tap(last - 1, "l_out", x);
}

// One sub-block of a decoupled layer on its own stream: pre-LN for decoders, post-LN for BERT.
void Transformer::decoupled_block(const LayerWeights& w, const BlockShape& s, int cache_layer, Tensor& x_r,
                                  const BatchLayout& layout, KVCache& cache) {
  if (cfg_.is_decoder()) {
    Tensor h = be_.scratch(x_r.rows, x_r.cols);
    norm(x_r, w.norm1_w, w.norm1_b, h);
    Tensor a = attention_partial(w, s, cache_layer, h, layout, cache);
    add_bias(a, w.bo);
    be_.add(x_r, a);
    norm(x_r, w.norm2_w, w.norm2_b, h);
    Tensor m = ffn_partial(w, s, h);
    add_bias(m, w.b_down);
    be_.add(x_r, m);
  } else {
    Tensor a = attention_partial(w, s, cache_layer, x_r, layout, cache);
    add_bias(a, w.bo);
    be_.add(x_r, a);
    norm(x_r, w.norm1_w, w.norm1_b, x_r);
    Tensor m = ffn_partial(w, s, x_r);
    add_bias(m, w.b_down);
    be_.add(x_r, m);
    norm(x_r, w.norm2_w, w.norm2_b, x_r);
  }
}

// Heads `s` of a layer: column-parallel Q/K/V, attention, row-parallel output projection (no bias).
Tensor Transformer::attention_partial(const LayerWeights& w, const BlockShape& s, int cache_layer, const Tensor& h,
                                      const BatchLayout& layout, KVCache& cache, int tap_layer) {
  const int64_t T = h.rows;
  Tensor q = be_.scratch(T, s.q_dim()), k = be_.scratch(T, s.kv_dim()), v = be_.scratch(T, s.kv_dim());
  be_.matmul(h, w.wq, w.bq.empty() ? nullptr : &w.bq, q);
  be_.matmul(h, w.wk, w.bk.empty() ? nullptr : &w.bk, k);
  be_.matmul(h, w.wv, w.bv.empty() ? nullptr : &w.bv, v);
  if (tap_layer >= 0) {
    tap(tap_layer, "attn_q", q, true);
    tap(tap_layer, "attn_k", k, true);
    tap(tap_layer, "attn_v", v, true);
  }
  if (cfg_.family == Family::Llama) {
    if (rope_inv_freq_.empty())
      be_.rope(q, k, layout.positions, cfg_.head_dim, cfg_.rope_theta);
    else
      be_.rope_scaled(q, k, layout.positions, cfg_.head_dim, rope_inv_freq_);
  }
  be_.store_kv(k, v, cache, cache_layer, layout);
  Tensor ctx = be_.scratch(T, s.q_dim());
  AttentionHeads heads = s.attention_heads();
  heads.window = cfg_.sliding_window;  // Mistral: each query sees the last `window` keys
  be_.attention(q, cache, cache_layer, layout, heads, cfg_.is_decoder(), ctx);
  if (tap_layer >= 0) tap(tap_layer, "attn_ctx", ctx, true);
  Tensor out = be_.scratch(T, cfg_.hidden);
  be_.matmul(ctx, w.wo, nullptr, out);
  return out;
}

// FFN columns `s` of a layer: column-parallel up (and gate), activation, row-parallel down (no bias).
// Gated (llama family): act(h W_gate^T) * (h W_up^T), act SiLU (SwiGLU) or GELU (Gemma's GeGLU).
Tensor Transformer::ffn_partial(const LayerWeights& w, const BlockShape& s, const Tensor& h) {
  Tensor up = be_.scratch(h.rows, s.intermediate);
  be_.matmul(h, w.w_up, w.b_up.empty() ? nullptr : &w.b_up, up);
  if (cfg_.gated_ffn()) {
    Tensor gate = be_.scratch(h.rows, s.intermediate);
    be_.matmul(h, w.w_gate, nullptr, gate);
    if (cfg_.activation == Activation::SiLU)
      be_.silu_mul(gate, up);
    else
      be_.gelu_mul(gate, up, cfg_.activation == Activation::GeluTanh);
    up = gate;
  } else {
    be_.gelu(up, cfg_.activation == Activation::GeluTanh);
  }
  Tensor out = be_.scratch(h.rows, cfg_.hidden);
  be_.matmul(up, w.w_down, nullptr, out);
  return out;
}

Span Transformer::head_rows() const { return head_.empty() ? Span{0, cfg_.vocab} : head_[tp_.rank()]; }

// logits = h W_head^T over this rank's rows of the head: [rows, head rows].
Tensor Transformer::head_logits(const Tensor& hidden, const std::vector<int64_t>& rows) {
  Tensor picked = be_.scratch(static_cast<int64_t>(rows.size()), cfg_.hidden);
  be_.gather_rows(hidden, rows, picked);
  Tensor out = be_.scratch(picked.rows, head_rows().count);
  be_.matmul(picked, w_.lm_head, nullptr, out);
  return out;
}

Tensor Transformer::logits(const Tensor& hidden, const std::vector<int64_t>& rows) {
  Tensor mine = head_logits(hidden, rows);
  if (!head_split()) return mine;
  // Every rank's [rows, its head rows], in rank order, become [rows, vocab].
  const int64_t R = mine.rows;
  head_host_.resize(mine.numel());
  be_.to_host(mine, head_host_.data());
  std::vector<int64_t> counts;
  for (const Span& h : head_) counts.push_back(R * h.count);
  tp_.all_gather(head_host_, counts, gathered_);
  std::vector<float> whole(R * cfg_.vocab);
  const float* part = gathered_.data();
  for (const Span& h : head_) {
    for (int64_t i = 0; i < R; ++i) std::copy(part + i * h.count, part + (i + 1) * h.count, &whole[i * cfg_.vocab + h.begin]);
    part += R * h.count;
  }
  Tensor out = be_.scratch(R, cfg_.vocab);
  be_.from_host(whole.data(), out);
  return out;
}

std::vector<LogitSummary> Transformer::logit_summaries(const Tensor& hidden, const std::vector<int64_t>& rows,
                                                       const std::vector<int32_t>& targets) {
  const Tensor mine = head_logits(hidden, rows);
  const Span slice = head_rows();
  const size_t R = rows.size(), K = LogitSummary::kDoubles;
  head_host_.resize(mine.numel());
  be_.to_host(mine, head_host_.data());
  std::vector<LogitSummary> out(R);
  for (size_t i = 0; i < R; ++i)
    out[i] = summarize_logits(head_host_.data() + i * slice.count, slice, targets.empty() ? -1 : targets[i]);
  if (!head_split()) return out;
  // [rank][row][K]: every rank's summaries of its slice of each row, merged in vocabulary order.
  summaries_.resize(R * K);
  for (size_t i = 0; i < R; ++i) out[i].pack(&summaries_[i * K]);
  tp_.all_gather(summaries_, gathered_summaries_);
  std::vector<LogitSummary> slices(tp_.size());
  for (size_t i = 0; i < R; ++i) {
    for (int r = 0; r < tp_.size(); ++r) slices[r] = LogitSummary::unpack(&gathered_summaries_[(r * R + i) * K]);
    out[i] = merge_summaries(slices);
  }
  return out;
}

}  // namespace lowsync
