#pragma once
// Named intermediate tensors of one forward pass, llama.cpp style (token_embd, blk.3.attn_out,
// result_norm, ...), copied to host memory for `debug.dump`: a user compares them layer by layer
// with a reference implementation to find the first layer where two engines part.
//
// Names (L = layer index; [T, H] = packed tokens x hidden):
//   token_embd          [T, H]  the first layer's input (embeddings)
//   blk.L.attn_norm     [T, H]  pre-LN: the attention's input after the norm
//   blk.L.attn_q|k|v    [T, heads x head_dim]  Q/K/V projections before RoPE (this rank's heads)
//   blk.L.attn_ctx      [T, heads x head_dim]  attention output before the output projection
//   blk.L.attn_out      [T, H]  the attention's output (summed over ranks, bias added)
//   blk.L.ffn_inp       [T, H]  the residual stream after attention (the FFN block's input)
//   blk.L.ffn_norm      [T, H]  pre-LN: the FFN's input after the norm
//   blk.L.ffn_out       [T, H]  the FFN's output (summed over ranks, bias added)
//   blk.L.l_out         [T, H]  the layer's output (the residual stream)
//   result_norm         [T, H]  after the final norm (decoders)
// A tensor that is one rank's share under tensor parallelism (Q/K/V and the attention context, and
// every tensor of a Sync-Point-Drop block before its one sync) gets the suffix `.tp{r}`.
#include <cstdint>
#include <string>
#include <vector>

#include "layers/backend.h"
#include "layers/batch_layout.h"

namespace lowsync {

struct TappedTensor {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<float> data;  // rows x cols, row-major
};

class TensorTaps {
 public:
  // `patterns`: names or shell-style globs (`blk.*.attn_out`, `blk.3.*`, `*`).
  explicit TensorTaps(std::vector<std::string> patterns) : patterns_(std::move(patterns)) {}

  bool wants(const std::string& name) const;
  // Copies t to host under `name` (a name taken twice keeps the first copy).
  void take(const std::string& name, Backend& be, const Tensor& t);
  // The pass the tensors come from: its tokens (first stage) and how its rows are packed.
  void set_tokens(const std::vector<int32_t>& tokens) { tokens_ = tokens; }
  void set_layout(const BatchLayout& layout) { layout_ = layout; }

  const std::vector<TappedTensor>& tensors() const { return tensors_; }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const BatchLayout& layout() const { return layout_; }

 private:
  std::vector<std::string> patterns_;
  std::vector<TappedTensor> tensors_;
  std::vector<int32_t> tokens_;
  BatchLayout layout_;
};

}  // namespace lowsync
