// bench_engine: the CPU engine's prefill and decode speed on a LLaMA-shaped model, next to the
// machine's own limits measured in the same run (cblas_sgemm on the prefill's GEMM shapes, a
// streaming memory read), and the ratios of the two:
//   prefill efficiency = engine GFLOP/s / sgemm GFLOP/s (FLOP-weighted over the shapes)
//   decode efficiency  = weight bytes streamed per second / read bandwidth
// The machine may be shared (other processes slow the engine and the probes at random moments), so
// rounds interleave engine and probe measurements and the JSON keeps every round. In a round the
// engine's prefill is the fastest of --prefill-reps passes, each sgemm shape the fastest of 3, the
// bandwidth the fastest of 5 reads, and a decode step the median of --decode-steps steps. A round's
// efficiency divides its engine figure by the best probe figure of the whole run (the machine's
// limit as measured: a probe slowed by other work would otherwise inflate the ratio, even past 1);
// the reported efficiency is the median over rounds, with min and max as the spread.
//
//   bench_engine --model out/bench/llama-200m [--threads 1] [--prefill-tokens 1024]
//                [--prefill-seqs 4] [--prefill-reps 2] [--decode-steps 32] [--decode-prompt 128]
//                [--decode-batch 1 --decode-batch 8] [--rounds 3] [--cpu-time] [--out bench/results/engine.json]
#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <time.h>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "bench/machine_probes.h"
#include "bench/timed_backend.h"
#include "io/error.h"
#include "io/model_config.h"
#include "io/weights_dtype.h"
#include "jobs/finite.h"
#include "jobs/logprobs.h"
#include "jobs/sampler.h"
#include "layers/model.h"

namespace po = boost::program_options;
using namespace lowsync;
using lowsync::bench::GemmShape;
using lowsync::bench::median;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Seconds on the clock the engine's passes (and the profile's kernels) are timed by: wall time, or
// with --cpu-time CPU time, which other processes on a shared machine do not inflate (their use of
// memory bandwidth still does): at one thread the calling thread's (every kernel runs on it); at
// more the whole process's, the work of all its threads, their spinning waits included (a kernel
// that gains nothing from its second thread shows twice its one-thread time; one that splits
// without overhead, its one-thread time). The probes stay in wall time.
bool engine_cpu_clock = false;
clockid_t engine_cpu_clock_id = CLOCK_THREAD_CPUTIME_ID;
double step_clock() {
  if (!engine_cpu_clock) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec t;
  clock_gettime(engine_cpu_clock_id, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// The GEMMs of one prefill pass over T tokens in S sequences: y = x w^T with x [T, in], w [out, in]
// for every projection of every layer, and the LM head on the last token of each sequence.
std::vector<GemmShape> prefill_gemms(const ModelConfig& c, int64_t T, int64_t S) {
  const int64_t H = c.hidden, L = c.n_layers;
  return {{"q_proj", T, c.q_dim(), H, L},           {"k_proj,v_proj", T, c.kv_dim(), H, 2 * L},
          {"o_proj", T, H, c.q_dim(), L},           {"gate_proj,up_proj", T, c.intermediate, H, 2 * L},
          {"down_proj", T, H, c.intermediate, L},   {"lm_head", S, c.vocab, H, 1}};
}

// Weight shapes (out_features, in_features) -> the weights' names, for the per-kernel profile.
std::map<std::pair<int64_t, int64_t>, std::string> weight_names(const ModelConfig& c) {
  std::map<std::pair<int64_t, int64_t>, std::string> names;
  for (const GemmShape& g : prefill_gemms(c, 1, 1)) {
    std::string& n = names[{g.N, g.K}];
    n += (n.empty() ? "" : ",") + g.name;
  }
  return names;
}

// FLOPs of one prefill pass of S sequences of n new tokens each (no cached past), counting
// multiply and add as 2:
//   projections and LM head:  sum over prefill_gemms of count * 2 M N K
//                             = L * 2 T (H q + 2 H kv + q H + 3 H I) + 2 S H V
//   attention (causal):       L * S * 4 q sum_{i=1..n} i = L * S * 4 q n (n+1)/2
//     (QK^T and PV each cost 2 head_dim FLOPs per head per visible (query, key) pair; q = heads x
//     head_dim; query i sees keys 1..i; the masked half is not counted even where computed)
// Element-wise work (norms, RoPE, SiLU, softmax) is O(T H) and left out (< 1% here).
double prefill_flops(const ModelConfig& c, int64_t S, int64_t n) {
  double f = 0;
  for (const GemmShape& g : prefill_gemms(c, S * n, S)) f += g.count * g.flops();
  f += double(c.n_layers) * S * 4.0 * c.q_dim() * (double(n) * (n + 1) / 2);
  return f;
}

// fp32 bytes of weights one decode step of B sequences must read: every layer's matrices and norms,
// the final norm and the LM head whole, and B rows of the token embedding.
// `bytes_per_weight`: 4 for fp32 weights, 2 for bf16 / fp16 (norm weights, a sliver, counted alike).
double decode_weight_bytes(const ModelConfig& c, int64_t B, double bytes_per_weight) {
  const int64_t H = c.hidden, V = c.vocab;
  const int64_t untouched = c.tied_embeddings ? 0 : V * H;  // the embedding table, but for B rows
  return bytes_per_weight * double(c.parameter_count() - untouched + B * H);
}

struct Engine {
  Transformer& model;
  std::mt19937 rng{7};

  std::vector<int32_t> random_tokens(int64_t n) {
    std::uniform_int_distribution<int32_t> u(3, model.config().vocab - 1);
    std::vector<int32_t> t(n);
    for (auto& x : t) x = u(rng);
    return t;
  }

  // One prefill pass as generation runs it: S prompts of n tokens packed, then the logits of each
  // prompt's last token. Returns seconds.
  double prefill(int64_t S, int64_t n, KVCache& cache) {
    BatchLayout layout;
    for (int64_t s = 0; s < S; ++s) layout.add(n, 0, s * n);
    const std::vector<int32_t> tokens = random_tokens(S * n);
    std::vector<int64_t> last;
    for (const SequenceSlot& s : layout.seqs) last.push_back(s.token_begin + s.n_new - 1);
    const double t0 = step_clock();
    Tensor hidden = model.forward(tokens, layout, cache);
    Tensor logits = model.logits(hidden, last);
    return step_clock() - t0;
  }

  // B sequences: a prompt of p tokens each (not timed), then `steps` decode steps of one token per
  // sequence (forward, logits, greedy pick on the host). Returns the seconds of each step.
  // `host_work`: after each step's timing, the host-side work a generate job does per new token on
  // the same logits (the finite check, the sampler's greedy pick, the token's log-prob), timed
  // apart: {finite, sampler, logprobs} seconds summed over the steps. `profile`: its kernel
  // timers restart after the prompt, so they hold the steps' kernels only.
  std::vector<double> decode(int64_t B, int64_t p, int steps, std::vector<double>* host_work = nullptr,
                             bench::TimedBackend* profile = nullptr) {
    const ModelConfig& c = model.config();
    KVCache cache = model.make_cache(B * (p + steps));
    BatchLayout pre;
    for (int64_t b = 0; b < B; ++b) pre.add(p, 0, b * (p + steps));
    Tensor h = model.forward(random_tokens(B * p), pre, cache);
    if (profile) profile->reset();
    std::vector<int32_t> next = random_tokens(B);
    std::vector<float> host(B * c.vocab);
    std::vector<double> t;
    for (int i = 0; i < steps; ++i) {
      BatchLayout layout;
      std::vector<int64_t> rows;
      for (int64_t b = 0; b < B; ++b) {
        layout.add(1, p + i, b * (p + steps));
        rows.push_back(b);
      }
      const double t0 = step_clock();
      Tensor hidden = model.forward(next, layout, cache);
      Tensor logits = model.logits(hidden, rows);
      model.backend().to_host(logits, host.data());
      for (int64_t b = 0; b < B; ++b) {
        const float* row = host.data() + b * c.vocab;
        next[b] = static_cast<int32_t>(std::max_element(row, row + c.vocab) - row);
      }
      t.push_back(step_clock() - t0);
      if (host_work) job_host_work(host.data(), B, *host_work);
    }
    return t;
  }

  // What generate (jobs/continuous_generate.cpp) does per new token on top of the pass: its own
  // functions on this step's logits, greedy as bench_llamacpp's jobs (temperature 0, no top log-probs).
  void job_host_work(const float* logits, int64_t B, std::vector<double>& seconds) {
    const int vocab = model.config().vocab;
    static const GenerateOptions greedy;
    Sampler sampler(greedy, 0, 0);
    const std::vector<int32_t> prompt(16, 3), generated(8, 3);
    RowResult row;
    seconds.resize(3);
    for (int64_t b = 0; b < B; ++b) {
      const float* l = logits + b * vocab;
      double t0 = step_clock();
      require_finite(model, l, vocab, b, "generate", "logits");
      seconds[0] += step_clock() - t0;
      t0 = step_clock();
      const int token = sampler.next(l, vocab, prompt, generated);
      seconds[1] += step_clock() - t0;
      t0 = step_clock();
      record_logprobs(l, vocab, token, greedy.logprobs, row);
      seconds[2] += step_clock() - t0;
    }
  }
};

json stats(const std::vector<double>& v) {
  return {{"median", median(v)}, {"min", *std::min_element(v.begin(), v.end())},
          {"max", *std::max_element(v.begin(), v.end())}, {"rounds", v}};
}

int run(int argc, char** argv) {
  std::string model_dir, out_path, weights_name;
  int threads, decode_steps, rounds, prefill_reps;
  bool bf16_dot = false, q8_dot = false;
  int64_t prefill_tokens, prefill_seqs, decode_prompt, bw_mib;
  std::vector<int64_t> decode_batches;
  po::options_description opts("bench_engine options");
  opts.add_options()("help,h", "this help")(
      "model", po::value(&model_dir)->default_value("out/bench/llama-200m"), "LLaMA-family model directory")(
      "threads", po::value(&threads)->default_value(1), "BLAS threads (engine and sgemm probe)")(
      "weights-dtype", po::value(&weights_name)->default_value("fp32"), "weight matrices stored as fp32, bf16, fp16 or q8_0")(
      "bf16-dot", po::bool_switch(&bf16_dot), "bf16 weights: products round x to bf16 (weights.bf16_dot)")(
      "q8-dot", po::bool_switch(&q8_dot), "q8_0 weights: decode products quantise x to q8_0 (weights.q8_dot)")(
      "prefill-tokens", po::value(&prefill_tokens)->default_value(1024), "tokens in one packed prefill pass")(
      "prefill-seqs", po::value(&prefill_seqs)->default_value(4), "prompts the prefill tokens are split into")(
      "prefill-reps", po::value(&prefill_reps)->default_value(2), "prefill passes per round (the fastest counts)")(
      "decode-steps", po::value(&decode_steps)->default_value(32), "decode steps timed per batch and round")(
      "decode-prompt", po::value(&decode_prompt)->default_value(128), "prompt tokens before decoding")(
      "decode-batch", po::value(&decode_batches)->multitoken(), "decode batch sizes (default 1 8)")(
      "rounds", po::value(&rounds)->default_value(3), "interleaved rounds of engine and probe measurements")(
      "cpu-time", po::bool_switch(&engine_cpu_clock), "time the engine's passes in CPU time (the thread's; at --threads > 1 the process's)")(
      "bandwidth-mib", po::value(&bw_mib)->default_value(1024), "buffer of the bandwidth probe (>> last-level cache)")(
      "out", po::value(&out_path)->default_value("bench/results/engine.json"), "JSON output");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, opts), vm);
  if (vm.count("help")) {
    std::cout << opts;
    return 0;
  }
  po::notify(vm);
  if (decode_batches.empty()) decode_batches = {1, 8};
  if (threads > 1) engine_cpu_clock_id = CLOCK_PROCESS_CPUTIME_ID;  // every thread's work on the clock
  if (prefill_seqs < 1 || prefill_tokens % prefill_seqs)
    throw UserError("--prefill-tokens must be a multiple of --prefill-seqs");
  const int64_t seq_len = prefill_tokens / prefill_seqs;

  const ModelConfig cfg = load_model_config(model_dir);
  if (cfg.family != Family::Llama || cfg.bp.enabled())
    throw UserError(model_dir + ": bench_engine measures LLaMA-family models (FLOP and byte counts assume one)");
  WeightsDType weights = WeightsDType::F32;
  if (!parse_weights_dtype(weights_name, weights) || weights == WeightsDType::Auto)
    throw UserError("--weights-dtype is '" + weights_name + "'; expected fp32, bf16 or fp16");
  const DType dtype = weights == WeightsDType::BF16  ? DType::BF16
                      : weights == WeightsDType::F16 ? DType::F16
                      : weights == WeightsDType::Q8_0 ? DType::Q8_0
                                                      : DType::F32;
  if (bf16_dot && dtype != DType::BF16) throw UserError("--bf16-dot needs --weights-dtype bf16");
  if (q8_dot && dtype != DType::Q8_0) throw UserError("--q8-dot needs --weights-dtype q8_0");
  std::unique_ptr<Backend> cpu = make_cpu_backend(threads, dtype, bf16_dot, q8_dot);
  // The model runs on the timing wrapper, which times nothing but in the profile passes after the rounds.
  bench::TimedBackend timed(*cpu, weight_names(cfg));
  if (engine_cpu_clock) timed.set_clock(step_clock);  // the profile's kernels on the steps' clock
  Backend* be = &timed;
  auto probes = bench::make_cpu_probes(threads, bw_mib << 20);
  const auto t_load = Clock::now();
  Transformer model(cfg, *be);
  const double load_s = seconds_since(t_load);
  Engine engine{model};

  const std::vector<GemmShape> gemms = prefill_gemms(cfg, prefill_tokens, prefill_seqs);
  const double flops = prefill_flops(cfg, prefill_seqs, seq_len);
  KVCache prefill_cache = model.make_cache(prefill_tokens);
  engine.prefill(prefill_seqs, seq_len, prefill_cache);  // warm-up: first-touch of activations
  std::fprintf(stderr, "bench_engine: %s loaded in %.1f s; %d rounds\n", model_dir.c_str(), load_s, rounds);

  std::vector<double> pre_s, sgemm_gflops, read_bw, copy_bw;
  std::vector<std::vector<double>> shape_s(gemms.size());
  std::vector<std::vector<double>> step_s(decode_batches.size());
  for (int r = 0; r < rounds; ++r) {
    // Prefill, then sgemm on its shapes.
    double best = 1e300;
    for (int i = 0; i < prefill_reps; ++i) best = std::min(best, engine.prefill(prefill_seqs, seq_len, prefill_cache));
    pre_s.push_back(best);
    double gemm_flops = 0, gemm_s = 0;
    for (size_t g = 0; g < gemms.size(); ++g) {
      const double t = probes->gemm_seconds(gemms[g], 3);
      shape_s[g].push_back(t);
      gemm_flops += gemms[g].count * gemms[g].flops();
      gemm_s += gemms[g].count * t;
    }
    sgemm_gflops.push_back(gemm_flops / gemm_s / 1e9);
    // Decode, each batch size next to a bandwidth read.
    for (size_t b = 0; b < decode_batches.size(); ++b) {
      read_bw.push_back(probes->read_bandwidth(5));
      step_s[b].push_back(median(engine.decode(decode_batches[b], decode_prompt, decode_steps)));
    }
    copy_bw.push_back(probes->copy_bandwidth(3));
    std::fprintf(stderr, "  round %d: prefill %.2f s (%.1f GFLOP/s, sgemm %.1f), decode b%ld %.1f ms/step (read %.1f GB/s)\n",
                 r + 1, pre_s.back(), flops / pre_s.back() / 1e9, sgemm_gflops.back(), long(decode_batches[0]),
                 1e3 * step_s[0].back(), read_bw[r * decode_batches.size()] / 1e9);
  }
  // The profile: one more prefill pass and decode run per batch size with every kernel timed
  // (the timers' own cost stays out of the figures above), and the job's host work per token.
  json profile;
  {
    auto kernels_ms = [&](double per) {
      json k;
      double total = 0;
      for (const auto& [name, sec] : timed.seconds()) {
        k[name] = {{"ms", 1e3 * sec / per}, {"calls", double(timed.calls().at(name)) / per}};
        total += sec;
      }
      return std::make_pair(k, total / per);
    };
    timed.set_enabled(true);
    timed.reset();
    const double pass_s = engine.prefill(prefill_seqs, seq_len, prefill_cache);
    auto [pk, pk_s] = kernels_ms(1);
    profile["prefill"] = {{"pass_ms", 1e3 * pass_s}, {"kernels_ms", 1e3 * pk_s},
                          {"outside_kernels_ms", 1e3 * (pass_s - pk_s)}, {"kernels", pk}};
    for (int64_t B : decode_batches) {
      timed.reset();
      std::vector<double> host;
      const std::vector<double> t = engine.decode(B, decode_prompt, decode_steps, &host, &timed);
      double step_sum = 0;
      for (double x : t) step_sum += x;
      auto [dk, dk_s] = kernels_ms(decode_steps);
      const double step_s = step_sum / decode_steps;
      profile["decode_b" + std::to_string(B)] = {
          {"step_ms", 1e3 * step_s}, {"kernels_ms", 1e3 * dk_s}, {"outside_kernels_ms", 1e3 * (step_s - dk_s)},
          {"kernels", dk},
          {"job_host_work_ms_per_step",
           {{"finite_check", 1e3 * host[0] / decode_steps}, {"sampler", 1e3 * host[1] / decode_steps},
            {"logprob", 1e3 * host[2] / decode_steps}}}};
    }
    timed.set_enabled(false);
  }

  const double sgemm_limit = *std::max_element(sgemm_gflops.begin(), sgemm_gflops.end());
  const double bw_limit = *std::max_element(read_bw.begin(), read_bw.end());
  std::vector<double> pre_eff;
  std::vector<std::vector<double>> dec_eff(decode_batches.size());
  for (double t : pre_s) pre_eff.push_back(flops / t / 1e9 / sgemm_limit);
  for (size_t b = 0; b < decode_batches.size(); ++b)
    for (double t : step_s[b])
      dec_eff[b].push_back(decode_weight_bytes(cfg, decode_batches[b], weights_dtype_bytes(weights)) / t / bw_limit);

  auto map = [](const std::vector<double>& v, auto f) {
    std::vector<double> o;
    for (double x : v) o.push_back(f(x));
    return o;
  };
  json j;
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += (i ? " " : "") + std::string(argv[i]);
  j["command"] = cmd;
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  j["date"] = date;
  j["method"] =
      "per round: prefill fastest of reps_per_round passes, decode step median of the steps; sgemm fastest of 3 per "
      "shape, read bandwidth fastest of 5; efficiency per round = engine figure / best probe figure of the run; "
      "reported: median [min, max] over rounds";
  j["machine"] = probes->info();
  j["threads"] = threads;
  j["engine_clock"] = !engine_cpu_clock ? "wall" : threads > 1 ? "process CPU time (all threads)" : "thread CPU time";
  j["weights_dtype"] = weights_dtype_name(weights);
  j["bf16_dot"] = bf16_dot;
  j["q8_dot"] = q8_dot;
  j["model"] = {{"dir", model_dir},
                {"architecture", cfg.architecture},
                {"parameters", cfg.parameter_count()},
                {"hidden", cfg.hidden},
                {"layers", cfg.n_layers},
                {"heads", cfg.n_heads},
                {"kv_heads", cfg.n_kv_heads},
                {"intermediate", cfg.intermediate},
                {"vocab", cfg.vocab},
                {"weight_bytes", model.weight_bytes()},
                {"load_s", load_s}};
  json shapes = json::array();
  for (size_t g = 0; g < gemms.size(); ++g)
    shapes.push_back({{"name", gemms[g].name}, {"M", gemms[g].M}, {"N", gemms[g].N}, {"K", gemms[g].K},
                      {"count", gemms[g].count},
                      {"gflops", stats(map(shape_s[g], [&](double t) { return gemms[g].flops() / t / 1e9; }))}});
  j["prefill"] = {{"sequences", prefill_seqs},
                  {"tokens_per_sequence", seq_len},
                  {"tokens", prefill_tokens},
                  {"reps_per_round", prefill_reps},
                  {"flops", flops},
                  {"seconds", stats(pre_s)},
                  {"tokens_per_s", stats(map(pre_s, [&](double t) { return prefill_tokens / t; }))},
                  {"gflops", stats(map(pre_s, [&](double t) { return flops / t / 1e9; }))},
                  {"sgemm_gflops", stats(sgemm_gflops)},
                  {"sgemm_gflops_limit", sgemm_limit},
                  {"sgemm_shapes", shapes},
                  {"efficiency", stats(pre_eff)}};
  j["bandwidth"] = {{"read_gb_per_s", stats(map(read_bw, [](double b) { return b / 1e9; }))},
                    {"read_gb_per_s_limit", bw_limit / 1e9},
                    {"copy_gb_per_s", stats(map(copy_bw, [](double b) { return b / 1e9; }))},
                    {"probe", "single-threaded sum of a buffer >> last-level cache (read); copy for reference"}};
  j["decode"] = json::array();
  for (size_t b = 0; b < decode_batches.size(); ++b) {
    const int64_t B = decode_batches[b];
    const double bytes = decode_weight_bytes(cfg, B, weights_dtype_bytes(weights));
    j["decode"].push_back({{"batch", B},
                           {"prompt", decode_prompt},
                           {"steps", decode_steps},
                           {"weight_bytes_per_step", bytes},
                           {"ms_per_step", stats(map(step_s[b], [](double t) { return 1e3 * t; }))},
                           {"ms_per_token", stats(map(step_s[b], [&](double t) { return 1e3 * t / B; }))},
                           {"tokens_per_s", stats(map(step_s[b], [&](double t) { return B / t; }))},
                           {"weight_gb_per_s", stats(map(step_s[b], [&](double t) { return bytes / t / 1e9; }))},
                           {"efficiency", stats(dec_eff[b])}});
  }
  j["profile"] = profile;
  j["profile_method"] =
      "after the rounds, one prefill pass and one decode run per batch size with every Backend call timed "
      "(bench/timed_backend.h; matmuls named by their weight's shape); per pass (prefill) or per step (decode): "
      "ms and calls per kernel, their sum, and the rest (the model's own code: allocation, bookkeeping; logits "
      "to host and the greedy pick); job_host_work: what a generate job adds per step on the host (its "
      "require_finite, Sampler::next and record_logprobs on the step's logits, every row)";
  const double pe = median(pre_eff), de = median(dec_eff[0]);
  j["floors"] = {{"prefill_efficiency", 0.7}, {"decode_efficiency", 0.5}, {"decode_batch", decode_batches[0]},
                 {"prefill_met", pe >= 0.7}, {"decode_met", de >= 0.5}};

  std::ofstream(out_path) << j.dump(2) << "\n";

  std::printf("bench_engine: %s (%.0fM parameters), %d thread(s), %s; medians of %d rounds [min..max]\n",
              model_dir.c_str(), cfg.parameter_count() / 1e6, threads, j["machine"]["cpu_model"].get<std::string>().c_str(),
              rounds);
  auto line = [](const char* what, const std::vector<double>& v, double scale, const char* unit) {
    std::printf("  %-34s %9.2f %-9s [%.2f..%.2f]\n", what, scale * median(v), unit,
                scale * *std::min_element(v.begin(), v.end()), scale * *std::max_element(v.begin(), v.end()));
  };
  const std::string pre_name = "prefill " + std::to_string(prefill_seqs) + "x" + std::to_string(seq_len);
  line((pre_name + " tokens/s").c_str(), map(pre_s, [&](double t) { return prefill_tokens / t; }), 1, "tok/s");
  line((pre_name + " GFLOP/s").c_str(), map(pre_s, [&](double t) { return flops / t / 1e9; }), 1, "GFLOP/s");
  line("sgemm, same shapes (best = limit)", sgemm_gflops, 1, "GFLOP/s");
  line("prefill efficiency (floor 0.7)", pre_eff, 1, "");
  line("read bandwidth (best = limit)", read_bw, 1e-9, "GB/s");
  for (size_t b = 0; b < decode_batches.size(); ++b) {
    const int64_t B = decode_batches[b];
    const std::string d = "decode batch " + std::to_string(B);
    line((d + " ms/token").c_str(), map(step_s[b], [&](double t) { return 1e3 * t / B; }), 1, "ms");
    line((d + " weight GB/s").c_str(), map(step_s[b], [&](double t) { return decode_weight_bytes(cfg, B, weights_dtype_bytes(weights)) / t; }),
         1e-9, "GB/s");
    line((d + " efficiency" + (b == 0 ? " (floor 0.5)" : "")).c_str(), dec_eff[b], 1, "");
  }
  for (const auto& [what, p] : profile.items()) {
    std::printf("  profile %s:", what.c_str());
    std::vector<std::pair<double, std::string>> top;
    for (const auto& [name, k] : p["kernels"].items()) top.push_back({k["ms"].get<double>(), name});
    std::sort(top.rbegin(), top.rend());
    for (const auto& [ms, name] : top) std::printf(" %s %.2f;", name.c_str(), ms);
    std::printf(" outside kernels %.2f ms\n", p["outside_kernels_ms"].get<double>());
    if (p.contains("job_host_work_ms_per_step"))
      std::printf("    job host work per step: %s\n", p["job_host_work_ms_per_step"].dump().c_str());
  }
  std::printf("  floors: prefill %s, decode %s; wrote %s\n", pe >= 0.7 ? "met" : "NOT met",
              de >= 0.5 ? "met" : "NOT met", out_path.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: error: %s\n", e.what());
    return 1;
  }
}
