#pragma once
// A Backend that times another: every kernel call is forwarded and, while enabled, its wall time
// added to a per-kernel total, matrix products by the name of their weight (recognised by its
// shape; shapes that two weights share are named together, e.g. "q_proj,o_proj"). bench_engine
// runs its model on it and enables it for profile passes of its own, apart from the timed ones. Kernels of the CPU backend run to completion before they return,
// so a call's wall time is its kernel's.
#include <chrono>
#include <map>
#include <string>
#include <utility>

#include "layers/backend.h"

namespace lowsync::bench {

class TimedBackend final : public Backend {
 public:
  // `matmul_names`: (out_features, in_features) of a weight -> its name.
  TimedBackend(Backend& inner, std::map<std::pair<int64_t, int64_t>, std::string> matmul_names)
      : be_(inner), names_(std::move(matmul_names)) {}

  // Seconds per kernel name since the last reset, and calls.
  const std::map<std::string, double>& seconds() const { return seconds_; }
  const std::map<std::string, int64_t>& calls() const { return calls_; }
  // Off (the default): calls are forwarded untimed.
  void set_enabled(bool on) { enabled_ = on; }
  // The clock calls are timed by, in seconds (default: wall time).
  void set_clock(double (*clock)()) { clock_ = clock; }
  void reset() {
    seconds_.clear();
    calls_.clear();
  }

  std::string name() const override { return be_.name(); }
  DType weight_dtype() const override { return be_.weight_dtype(); }
  Tensor zeros(int64_t rows, int64_t cols) override { return be_.zeros(rows, cols); }
  Tensor scratch(int64_t rows, int64_t cols) override { return be_.scratch(rows, cols); }
  Tensor upload_weight(const std::vector<float>& host, int64_t rows, int64_t cols) override {
    return be_.upload_weight(host, rows, cols);
  }
  void to_host(const Tensor& t, float* dst) override { be_.to_host(t, dst); }
  void from_host(const float* src, Tensor& t) override { be_.from_host(src, t); }
  float* host_data(Tensor& t) override { return be_.host_data(t); }
  float* host_staging(int64_t n) override { return be_.host_staging(n); }
  KVCache make_kv_cache(int n_layers, int64_t capacity, int64_t kv_dim) override {
    return be_.make_kv_cache(n_layers, capacity, kv_dim);
  }
  bool has_extended_kernels() const override { return be_.has_extended_kernels(); }

  void embedding(const Tensor& table, const std::vector<int32_t>& ids, Tensor& out, bool accumulate) override {
    timed("embedding", [&] { be_.embedding(table, ids, out, accumulate); });
  }
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    const auto it = names_.find({w.rows, w.cols});
    const std::string name = "matmul " + (it != names_.end() ? it->second : std::to_string(w.rows) + "x" + std::to_string(w.cols));
    timed(name, [&] { be_.matmul(x, w, bias, y); });
  }
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    timed("rmsnorm", [&] { be_.rmsnorm(x, weight, eps, out); });
  }
  void layernorm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps, Tensor& out) override {
    timed("layernorm", [&] { be_.layernorm(x, weight, bias, eps, out); });
  }
  void rope(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim, float theta) override {
    timed("rope", [&] { be_.rope(q, k, positions, head_dim, theta); });
  }
  void rope_scaled(Tensor& q, Tensor& k, const std::vector<int32_t>& positions, int head_dim,
                   const std::vector<float>& inv_freq) override {
    timed("rope", [&] { be_.rope_scaled(q, k, positions, head_dim, inv_freq); });
  }
  void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer, const BatchLayout& layout) override {
    timed("store_kv", [&] { be_.store_kv(k, v, cache, layer, layout); });
  }
  void attention(const Tensor& q, const KVCache& cache, int layer, const BatchLayout& layout,
                 const AttentionHeads& heads, bool causal, Tensor& out) override {
    timed("attention", [&] { be_.attention(q, cache, layer, layout, heads, causal, out); });
  }
  void gelu(Tensor& x, bool tanh_approximation) override { timed("gelu", [&] { be_.gelu(x, tanh_approximation); }); }
  void silu_mul(Tensor& gate, const Tensor& up) override { timed("silu_mul", [&] { be_.silu_mul(gate, up); }); }
  void gelu_mul(Tensor& gate, const Tensor& up, bool tanh_approximation) override {
    timed("gelu_mul", [&] { be_.gelu_mul(gate, up, tanh_approximation); });
  }
  void scale(Tensor& x, float s) override { timed("scale", [&] { be_.scale(x, s); }); }
  void add(Tensor& x, const Tensor& y) override { timed("add", [&] { be_.add(x, y); }); }
  void axpy(float alpha, const Tensor& y, Tensor& x) override { timed("axpy", [&] { be_.axpy(alpha, y, x); }); }
  void add_bias(Tensor& x, const Tensor& bias) override { timed("add_bias", [&] { be_.add_bias(x, bias); }); }
  void gather_rows(const Tensor& x, const std::vector<int64_t>& rows, Tensor& out) override {
    timed("gather_rows", [&] { be_.gather_rows(x, rows, out); });
  }

 private:
  template <typename F>
  void timed(const std::string& name, F f) {
    if (!enabled_) return f();
    const double t0 = clock_();
    f();
    seconds_[name] += clock_() - t0;
    ++calls_[name];
  }

  Backend& be_;
  std::map<std::pair<int64_t, int64_t>, std::string> names_;
  std::map<std::string, double> seconds_;
  std::map<std::string, int64_t> calls_;
  bool enabled_ = false;
  double (*clock_)() = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
};

}  // namespace lowsync::bench
