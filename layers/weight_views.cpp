#include "layers/weight_views.h"

#include <vector>

#include "io/error.h"

namespace lowsync {

namespace {

int64_t element_bytes(DType d) { return d == DType::F32 ? 4 : 2; }  // a vector's (norms, biases: fp32)

// Rows [begin, begin + count) of a matrix, or elements of a 1 x n vector: the same memory.
Tensor rows_view(const Tensor& t, int64_t begin, int64_t count) {
  if (t.empty()) return t;
  Tensor v = t;
  if (t.rows == 1) {  // a vector: its elements
    v.ptr = static_cast<char*>(t.ptr) + begin * element_bytes(t.dtype);
    v.cols = count;
  } else {
    v.ptr = static_cast<char*>(t.ptr) + t.row_bytes(begin);
    v.rows = count;
  }
  return v;
}

// Columns [begin, begin + count) of a matrix, copied into a weight of their own.
Tensor cols_copy(const Tensor& t, int64_t begin, int64_t count, Backend& be, int64_t& copied_bytes) {
  Tensor src = t;
  const float* host = t.dtype == DType::F32 ? be.host_data(src) : nullptr;
  if (!host)
    throw UserError("plan.runtime: the tensor-parallel tail slices the weights each rank holds, which needs fp32 "
                    "weights in host memory (backend: cpu)");
  std::vector<float> out(t.rows * count);
  for (int64_t r = 0; r < t.rows; ++r)
    for (int64_t c = 0; c < count; ++c) out[r * count + c] = host[r * t.cols + begin + c];
  copied_bytes += static_cast<int64_t>(out.size() * sizeof(float));
  return be.upload_weight(out, t.rows, count);
}

}  // namespace

LayerWeights share_view(const LayerWeights& whole, const ModelConfig& cfg, const LayerShare& share, Backend& be,
                        int64_t& copied_bytes) {
  const int64_t d = cfg.head_dim;
  const int64_t q0 = share.heads.begin * d, nq = share.heads.count * d;
  const int64_t kv0 = share.kv_heads.begin * d, nkv = share.kv_heads.count * d;
  const int64_t f0 = share.ffn.begin, nf = share.ffn.count;
  LayerWeights w = whole;  // norms and the row-parallel biases (added once, after the sum) as they are
  w.wq = rows_view(whole.wq, q0, nq);
  w.bq = rows_view(whole.bq, q0, nq);
  w.wk = rows_view(whole.wk, kv0, nkv);
  w.bk = rows_view(whole.bk, kv0, nkv);
  w.wv = rows_view(whole.wv, kv0, nkv);
  w.bv = rows_view(whole.bv, kv0, nkv);
  w.w_gate = rows_view(whole.w_gate, f0, nf);
  w.w_up = rows_view(whole.w_up, f0, nf);
  w.b_up = rows_view(whole.b_up, f0, nf);
  w.wo = cols_copy(whole.wo, q0, nq, be, copied_bytes);
  w.w_down = cols_copy(whole.w_down, f0, nf, be, copied_bytes);
  return w;
}

}  // namespace lowsync
