// The CUDA engine next to the GPU's own limits, measured in the same run:
//   prefill: the real Transformer on the CUDA backend over S sequences of P tokens; its matrix
//            products' FLOPs per second against cuBLAS alone on the same GEMM shapes and types
//            (weights in the chosen dtype, activations rounded to it, fp32 accumulation and output).
//   decode:  one token per sequence per step after that prefill; ms per step (the latency of one
//            token), tokens/s over the sequences, and the bytes a step must read (every weight
//            matrix once, plus the KV cache) per second against a device-to-device cudaMemcpy probe.
// Writes JSON to --out (and stdout). Build: with CUDA (target bench_cuda); run on one GPU:
//   build/bench/bench_cuda MODEL_DIR [--dtype bf16] [--seqs 4] [--prompt 512] [--steps 64] [--out FILE]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "layers/cuda_backend.h"
#include "layers/cuda_memory.h"
#include "layers/model.h"

using namespace lowsync;
namespace po = boost::program_options;

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

size_t dtype_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

// y [M, N] = x [M, K] w [N, K]^T, as Backend::matmul calls it; `count` such products per pass.
struct Gemm {
  std::string name;
  int64_t M, N, K, count;
  double flops() const { return 2.0 * M * N * K * count; }
};

// The matrix products of one forward pass over T tokens with `rows` rows of logits.
std::vector<Gemm> forward_gemms(const ModelConfig& c, int64_t T, int64_t rows) {
  const int64_t L = c.n_layers, H = c.hidden, I = c.intermediate;
  std::vector<Gemm> g = {{"q_proj", T, c.q_dim(), H, L},
                         {"kv_proj", T, c.kv_dim(), H, 2 * L},
                         {"o_proj", T, H, c.q_dim(), L},
                         {"ffn_up", T, I, H, (c.gated_ffn() ? 2 : 1) * L},
                         {"ffn_down", T, H, I, L}};
  if (c.is_decoder()) g.push_back({"lm_head", rows, c.vocab, H, 1});
  return g;
}

// Median seconds of `op` on the stream, timed with events (after one untimed warm-up run).
template <class Op>
double stream_seconds(cudaStream_t s, int reps, Op op) {
  cudaEvent_t start, stop;
  LOWSYNC_CUDA_CHECK(cudaEventCreate(&start));
  LOWSYNC_CUDA_CHECK(cudaEventCreate(&stop));
  op();  // warm-up: algorithm selection, workspace
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    LOWSYNC_CUDA_CHECK(cudaEventRecord(start, s));
    op();
    LOWSYNC_CUDA_CHECK(cudaEventRecord(stop, s));
    LOWSYNC_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    LOWSYNC_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    t.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return median(t);
}

// Seconds of one cublasGemmEx of this shape, set up as the CUDA backend does (median of reps).
double cublas_seconds(cublasHandle_t h, const std::shared_ptr<CudaStream>& stream, const Gemm& g, DType dtype,
                      int reps) {
  const cudaStream_t s = stream->get();
  const DeviceBuffer w(dtype_bytes(dtype) * g.N * g.K, stream), x(dtype_bytes(dtype) * g.M * g.K, stream),
      y(sizeof(float) * g.M * g.N, stream);
  LOWSYNC_CUDA_CHECK(cudaMemsetAsync(w.get(), 0, w.bytes(), s));
  LOWSYNC_CUDA_CHECK(cudaMemsetAsync(x.get(), 0, x.bytes(), s));
  const cudaDataType type = dtype == DType::F32 ? CUDA_R_32F : dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  const cublasComputeType_t compute = dtype == DType::F32 ? CUBLAS_COMPUTE_32F_PEDANTIC : CUBLAS_COMPUTE_32F;
  const float one = 1.f, zero = 0.f;
  auto run = [&] {
    LOWSYNC_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(g.N), int(g.M), int(g.K), &one, w.get(), type,
                                      int(g.K), x.get(), type, int(g.K), &zero, y.get(), CUDA_R_32F, int(g.N), compute,
                                      CUBLAS_GEMM_DEFAULT));
  };
  return stream_seconds(s, reps, run);
}

// Bytes/s moved (read + written) by a device-to-device copy of `bytes` (median of reps).
double copy_bandwidth(const std::shared_ptr<CudaStream>& stream, size_t bytes, int reps) {
  const cudaStream_t s = stream->get();
  const DeviceBuffer src(bytes, stream), dst(bytes, stream);
  LOWSYNC_CUDA_CHECK(cudaMemsetAsync(src.get(), 1, bytes, s));
  const double seconds = stream_seconds(s, reps, [&] {
    LOWSYNC_CUDA_CHECK(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, s));
  });
  return 2.0 * double(bytes) / seconds;
}

int run(int argc, char** argv) {
  std::string model_dir, dtype_name = "bf16", out_path = "bench/results/cuda_engine.json";
  int device = 0, seqs = 4, prompt = 512, steps = 64, reps = 5;
  po::options_description opts("bench_cuda MODEL_DIR options");
  opts.add_options()("model", po::value(&model_dir)->required(), "model directory (LLaMA or GPT-2)")(
      "dtype", po::value(&dtype_name), "weights: bf16 | fp16 | fp32")("device", po::value(&device), "CUDA device")(
      "seqs", po::value(&seqs), "sequences per batch")("prompt", po::value(&prompt), "prompt tokens per sequence")(
      "steps", po::value(&steps), "decode steps")("reps", po::value(&reps), "timed repetitions of prefill and probes")(
      "out", po::value(&out_path), "JSON output");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(opts).positional(pos).run(), vm);
  po::notify(vm);
  const DType dtype = dtype_name == "fp32" ? DType::F32 : dtype_name == "fp16" ? DType::F16 : DType::BF16;

  const ModelConfig cfg = load_model_config(model_dir);
  if (!cfg.is_decoder() || cfg.bp.enabled())
    throw std::runtime_error(model_dir + ": bench_cuda runs an ordinary decoder (llama, gpt2)");
  if (prompt + steps > cfg.max_positions)
    throw std::runtime_error("--prompt + --steps exceeds the model's " + std::to_string(cfg.max_positions) + " positions");
  std::unique_ptr<Backend> be = make_cuda_backend(device, dtype);
  Transformer model(cfg, *be);

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(3, cfg.vocab - 1);
  std::vector<int32_t> tokens(int64_t(seqs) * prompt);
  for (int32_t& t : tokens) t = token(rng);
  const int64_t per_seq = prompt + steps;
  BatchLayout prefill;
  std::vector<int64_t> last;
  for (int s = 0; s < seqs; ++s) {
    prefill.add(prompt, 0, s * per_seq);
    last.push_back(int64_t(s + 1) * prompt - 1);
  }
  std::vector<float> logits_host(int64_t(seqs) * cfg.vocab);
  // One pass as the generate job makes it: forward, logits of each sequence's last row, to host
  // (which waits for the stream, so wall time covers the device work).
  auto pass = [&](const std::vector<int32_t>& ids, const BatchLayout& layout, const std::vector<int64_t>& rows,
                  KVCache& cache) {
    const Tensor hidden = model.forward(ids, layout, cache);
    const Tensor logits = model.logits(hidden, rows);
    be->to_host(logits, logits_host.data());
  };

  std::vector<double> prefill_s;
  KVCache cache;
  for (int r = 0; r <= reps; ++r) {  // r = 0 warms up
    cache = model.make_cache(seqs * per_seq);
    const auto t0 = Clock::now();
    pass(tokens, prefill, last, cache);
    if (r) prefill_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }

  std::vector<double> step_s;
  std::vector<int32_t> next(seqs, 5);
  std::vector<int64_t> rows(seqs);
  for (int s = 0; s < seqs; ++s) rows[s] = s;
  for (int k = 0; k < steps; ++k) {
    BatchLayout decode;
    for (int s = 0; s < seqs; ++s) decode.add(1, prompt + k, s * per_seq);
    const auto t0 = Clock::now();
    pass(next, decode, rows, cache);
    step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }

  // cuBLAS alone on the same products, on its own stream and handle.
  const auto stream = std::make_shared<CudaStream>();
  cublasHandle_t cublas;
  LOWSYNC_CUBLAS_CHECK(cublasCreate(&cublas));
  LOWSYNC_CUBLAS_CHECK(cublasSetStream(cublas, stream->get()));
  const int64_t T = int64_t(seqs) * prompt;
  double gemm_flops = 0, cublas_s = 0;
  nlohmann::json shapes = nlohmann::json::array();
  for (const Gemm& g : forward_gemms(cfg, T, seqs)) {
    const double s = cublas_seconds(cublas, stream, g, dtype, reps) * g.count;
    gemm_flops += g.flops();
    cublas_s += s;
    shapes.push_back({{"name", g.name}, {"M", g.M}, {"N", g.N}, {"K", g.K}, {"count", g.count},
                      {"cublas_tflops", g.flops() / s / 1e12}});
  }
  const double copy_bps = copy_bandwidth(stream, size_t(1) << 30, reps);
  cublasDestroy(cublas);

  // Bytes one decode step must read: every weight matrix (lm_head included; the token embedding
  // only when it is the tied head) in the stored dtype, and each layer's K and V up to the context.
  double weight_bytes = 0;
  for (const Gemm& g : forward_gemms(cfg, 1, 1)) weight_bytes += double(g.N) * g.K * g.count * dtype_bytes(dtype);
  const double kv_bytes_mid = 2.0 * cfg.n_layers * seqs * (prompt + steps / 2.0) * cfg.kv_dim() * sizeof(float);
  const double prefill_time = median(prefill_s), step_time = median(step_s);
  const double engine_tflops = gemm_flops / prefill_time / 1e12, cublas_tflops = gemm_flops / cublas_s / 1e12;
  const double streamed_bps = (weight_bytes + kv_bytes_mid) / step_time;

  cudaDeviceProp prop{};
  LOWSYNC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  nlohmann::json j = {
      {"device", prop.name},
      {"backend", be->name()},
      {"model", model_dir},
      {"dtype", dtype_name},
      {"seqs", seqs},
      {"prompt_tokens", prompt},
      {"decode_steps", steps},
      {"prefill", {{"seconds", prefill_time},
                   {"tokens_per_s", T / prefill_time},
                   {"gemm_tflop", gemm_flops / 1e12},
                   {"tflops", engine_tflops},
                   {"cublas_tflops_same_shapes", cublas_tflops},
                   {"fraction_of_cublas", engine_tflops / cublas_tflops},
                   {"note", "FLOPs of the matrix products only; attention and element-wise work add time, not FLOPs"},
                   {"shapes", shapes}}},
      {"decode", {{"ms_per_step", step_time * 1e3},
                  {"tokens_per_s", seqs / step_time},
                  {"weight_bytes_per_step", weight_bytes},
                  {"kv_bytes_per_step_mid", kv_bytes_mid},
                  {"bytes_streamed_per_s", streamed_bps},
                  {"copy_probe_bytes_per_s", copy_bps},
                  {"fraction_of_copy_bandwidth", streamed_bps / copy_bps},
                  {"note", "copy probe counts bytes read + written by a 1 GiB device-to-device cudaMemcpy; decode "
                           "counts bytes read"}}},
  };
  const std::string text = j.dump(2);
  std::cout << text << "\n";
  std::ofstream(out_path) << text << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda: error: %s\n", e.what());
    return 1;
  }
}
