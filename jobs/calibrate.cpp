// SPD calibration: full TP is the reference; each layer is dropped alone and the deviation of the
// next-token distributions is measured at every position of the calibration prompts (mean
// KL(reference || dropped) and top-1 agreement). Layers are ranked least sensitive first, every
// prefix of that ranking is measured dropped together, and the longest prefix within the budget
// is the drop set. Compressed syncs (bf16, q8) are measured the same way, every layer synced.
// calibrate.method progressive ranks the layers instead by the SPD paper's progressive measure
// (perplexity increase from the last layer backwards, later layers already dropped) and sorts them
// into its three classes; the prefixes and the budget work as before.
#include "jobs/calibrate.h"

#include "io/log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "io/error.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/load_job.h"
#include "layers/model.h"
#include "planning/calibration.h"

namespace lowsync {

namespace {

// log-softmax of every position's logits, for all calibration prompts in one packed pass.
std::vector<float> next_token_logprobs(Transformer& model, const std::vector<std::vector<int32_t>>& prompts) {
  BatchLayout layout;
  std::vector<int32_t> tokens;
  for (const auto& p : prompts) {
    layout.add(static_cast<int64_t>(p.size()), 0, layout.tokens());
    tokens.insert(tokens.end(), p.begin(), p.end());
  }
  KVCache cache = model.make_cache(layout.tokens());
  Tensor hidden = model.forward(tokens, layout, cache);
  std::vector<int64_t> rows(layout.tokens());
  std::iota(rows.begin(), rows.end(), 0);
  Tensor logits = model.logits(hidden, rows);
  std::vector<float> lp(logits.numel());
  model.backend().to_host(logits, lp.data());
  const int V = model.config().vocab;
  for (int64_t r = 0; r < layout.tokens(); ++r) {
    float* l = lp.data() + r * V;
    const double mx = *std::max_element(l, l + V);
    double sum = 0;
    for (int v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
    const double lse = mx + std::log(sum);
    for (int v = 0; v < V; ++v) l[v] = static_cast<float>(double(l[v]) - lse);
  }
  return lp;
}

LayerSensitivity deviation(const std::vector<float>& ref, const std::vector<float>& got, int V) {
  const int64_t positions = static_cast<int64_t>(ref.size()) / V;
  double kl = 0, agree = 0;
  for (int64_t r = 0; r < positions; ++r) {
    const float* p = ref.data() + r * V;
    const float* q = got.data() + r * V;
    double k = 0;
    for (int v = 0; v < V; ++v) k += std::exp(double(p[v])) * (double(p[v]) - double(q[v]));
    kl += k;
    agree += (std::max_element(p, p + V) - p) == (std::max_element(q, q + V) - q);
  }
  return {0, kl / positions, agree / positions};
}

// Mean negative log-likelihood of each prompt's next tokens (nats), from next_token_logprobs.
double mean_nll(const std::vector<float>& lp, const std::vector<std::vector<int32_t>>& prompts, int V) {
  double nll = 0;
  int64_t first = 0, count = 0;
  for (const auto& p : prompts) {
    for (size_t i = 0; i + 1 < p.size(); ++i) nll -= lp[(first + int64_t(i)) * V + p[i + 1]];
    first += static_cast<int64_t>(p.size());
    count += static_cast<int64_t>(p.size()) - 1;
  }
  return count > 0 ? nll / count : 0;
}

// The SPD paper's procedure: from the last layer backwards, with every later layer already
// dropped, the perplexity increase when layer l drops too. By layer index.
std::vector<ProgressiveStep> progressive_sensitivity(Transformer& transformer,
                                                     const std::vector<std::vector<int32_t>>& prompts,
                                                     const std::vector<float>& ref, const CalibrateOptions& opt) {
  const int L = transformer.config().n_layers, V = transformer.config().vocab;
  std::vector<ProgressiveStep> steps(L);
  std::vector<bool> drop(L, false);
  double before = mean_nll(ref, prompts, V);
  for (int l = L - 1; l >= 0; --l) {
    drop[l] = true;
    transformer.set_spd_drop(drop);
    const double after = mean_nll(next_token_logprobs(transformer, prompts), prompts, V);
    ProgressiveStep& s = steps[l];
    s.layer = l;
    s.ppl_before = std::exp(before);
    s.ppl_after = std::exp(after);
    s.increase = std::exp(after - before) - 1;
    s.cls = s.increase < opt.sensitive ? SpdClass::Insensitive
            : s.increase < opt.extreme ? SpdClass::Sensitive
                                       : SpdClass::Extreme;
    before = after;
  }
  return steps;
}

}  // namespace

void calibrate_spd(const JobConfig& job) {
  Communicator world(MPI_COMM_WORLD, "world");
  std::vector<std::vector<int32_t>> prompts;
  const std::string prompts_path = job.calibrate.prompts.empty() ? job.input : job.calibrate.prompts;
  LoadedJob loaded = load_job(job, world, [&](const ModelConfig& model, const Plan& plan) {
    if (plan.dp != 1)
      throw UserError(job.path + ": calibrate runs one replica: start it with mpirun -np parallel.tp and parallel.dp = 1");
    if (model.bp.enabled())
      throw UserError(job.path + ": " + job.model + " is a decoupled model; Sync-Point Drop calibration is for tensor parallelism");
    if (!model.is_decoder())
      throw UserError(job.path + ": Sync-Point Drop needs a pre-LN decoder (llama, gpt2); " + model.architecture +
                      " is a post-LN encoder");
    if (model.spd_checkpoint.present())
      throw UserError(job.path + ": " + job.model + " was recovered for one Sync-Point Drop set (config.json "
                      "'lowsync_spd'); calibrate the model it was made from");
    if (plan.group < 2)
      throw UserError(job.path + ": calibrate needs parallel.tp >= 2; on one rank Sync-Point Drop changes nothing");
    PromptReader in(prompts_path, model.vocab, false);
    for (int64_t r = 0; r < std::min<int64_t>(in.rows(), job.calibrate.rows); ++r) {
      if (in.length(r) > model.max_positions)
        throw UserError(prompts_path + ": row " + std::to_string(r) + ": longer than the model's positions");
      if (in.length(r) > 0) prompts.push_back(in.tokens(r));
    }
    if (prompts.empty()) throw UserError(prompts_path + ": no calibration prompts");
  });
  const ModelConfig& model = loaded.model;
  Transformer& transformer = *loaded.transformer;
  const int L = model.n_layers, V = model.vocab;

  // The reference syncs in fp32 whatever the job's parallel.sync_dtype: compressed syncs are
  // measured against it below, as a drop set is.
  const SyncDType job_sync = transformer.tp().sync_dtype();
  transformer.tp().set_sync_dtype(SyncDType::F32);
  const std::vector<float> ref = next_token_logprobs(transformer, prompts);
  Calibration cal;
  cal.model = job.model;
  cal.tp = loaded.plan.group;
  cal.prompts = prompts_path;
  cal.rows = static_cast<int>(prompts.size());
  cal.tokens = static_cast<int>(ref.size() / V);
  cal.max_kl = job.calibrate.max_kl;
  cal.min_top1 = job.calibrate.min_top1;
  for (int l = 0; l < L; ++l) {
    std::vector<bool> drop(L, false);
    drop[l] = true;
    transformer.set_spd_drop(drop);
    LayerSensitivity s = deviation(ref, next_token_logprobs(transformer, prompts), V);
    s.layer = l;
    cal.layers.push_back(s);
  }
  cal.order.resize(L);
  std::iota(cal.order.begin(), cal.order.end(), 0);
  std::stable_sort(cal.order.begin(), cal.order.end(), [&](int a, int b) {
    const auto &x = cal.layers[a], &y = cal.layers[b];
    return x.kl < y.kl || (x.kl == y.kl && x.top1 > y.top1);
  });
  if (job.calibrate.method == CalibrateMethod::Progressive) {
    cal.progressive = progressive_sensitivity(transformer, prompts, ref, job.calibrate);
    cal.sensitive = job.calibrate.sensitive;
    cal.extreme = job.calibrate.extreme;
    std::stable_sort(cal.order.begin(), cal.order.end(),
                     [&](int a, int b) { return cal.progressive[a].increase < cal.progressive[b].increase; });
  }
  std::vector<bool> drop(L, false);
  for (int i = 0; i < L; ++i) {
    drop[cal.order[i]] = true;
    transformer.set_spd_drop(drop);
    cal.prefix.push_back(deviation(ref, next_token_logprobs(transformer, prompts), V));
  }
  cal.drop = cal.drop_within(cal.max_kl, cal.min_top1);
  // Compressed syncs against fp32 syncs, every layer synced (parallel.sync_dtype).
  transformer.set_spd_drop({});
  for (SyncDType d : {SyncDType::BF16, SyncDType::Q8}) {
    transformer.tp().set_sync_dtype(d);
    cal.sync_dtypes.push_back(deviation(ref, next_token_logprobs(transformer, prompts), V));
  }
  transformer.tp().set_sync_dtype(job_sync);

  if (world.rank() == 0) {
    cal.save(job.calibrate.output);
    log::summary("lowsync: SPD calibration of %s at tp=%d on %d prompts (%d positions)", job.model.c_str(), cal.tp,
                 cal.rows, cal.tokens);
    std::printf("  rank  layer  KL alone   top-1 alone   KL prefix  top-1 prefix\n");
    for (int i = 0; i < L; ++i) {
      const auto& s = cal.layers[cal.order[i]];
      std::printf("  %4d  %5d  %9.3g  %11.4f  %10.3g  %12.4f\n", i, s.layer, s.kl, s.top1, cal.prefix[i].kl,
                  cal.prefix[i].top1);
    }
    for (const ProgressiveStep& p : cal.progressive)
      std::printf("  progressive: layer %2d (later layers dropped): perplexity %.4g -> %.4g (%+.3f%%), %s\n", p.layer,
                  p.ppl_before, p.ppl_after, 100 * p.increase, spd_class_name(p.cls));
    std::printf("  budget max_kl %g, min_top1 %g: drop %zu of %d layers -> %s\n", cal.max_kl, cal.min_top1,
                cal.drop.size(), L, job.calibrate.output.c_str());
    std::printf("  compressed syncs, no layer dropped: bf16 KL %.3g top-1 %.4f; q8 KL %.3g top-1 %.4f\n",
                cal.sync_dtypes[0].kl, cal.sync_dtypes[0].top1, cal.sync_dtypes[1].kl, cal.sync_dtypes[1].top1);
    std::fflush(stdout);
  }
}

}  // namespace lowsync
