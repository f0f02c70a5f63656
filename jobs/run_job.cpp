// A job, start to end: check everything that can be checked before any compute (job, model, every
// input row), open the output, then batches of consecutive rows -> task -> append + flush ->
// progress line; a run report at the end.
#include "jobs/run_job.h"

#include <chrono>
#include <cstdio>
#include <memory>

#include "io/error.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/result_writer.h"
#include "jobs/tasks.h"
#include "layers/model.h"

namespace lowsync {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Tokens a row puts through the model in one pass.
int64_t pass_length(const PromptReader& in, const std::string& task, int64_t row) {
  if (task != "score") return in.length(row);
  return in.length(row) + std::max<int64_t>(in.target_length(row) - 1, 0);
}

void check_rows(const PromptReader& in, const JobConfig& job, const ModelConfig& model) {
  for (int64_t r = 0; r < in.rows(); ++r) {
    const std::string where = in.path() + ": row " + std::to_string(r) + ": ";
    if (in.length(r) == 0) throw UserError(where + "empty prompt; every row needs at least one token");
    const int64_t n = pass_length(in, job.task, r);
    if (n > model.max_positions)
      throw UserError(where + (job.task == "score" ? "prompt + targets" : "prompt") + " of " + std::to_string(n) +
                      " tokens exceeds the model's " + std::to_string(model.max_positions) + " positions");
  }
}

}  // namespace

void run_job(const JobConfig& job, bool resume, int world_rank, int world_size) {
  if (job.parallel.tp * job.parallel.dp != world_size)
    throw UserError(job.path + ": parallel.tp x parallel.dp = " + std::to_string(job.parallel.tp * job.parallel.dp) +
                    " but mpirun started " + std::to_string(world_size) + " ranks; they must be equal");
  if (job.parallel.tp != 1 || job.parallel.dp != 1)
    throw UserError(job.path + ": parallel.tp and parallel.dp other than 1 are not supported yet");

  const ModelConfig model = load_model_config(job.model);
  if (!model.is_decoder() && job.task != "embed")
    throw UserError(job.path + ": task '" + job.task + "' needs a decoder (llama or gpt2), but " + job.model +
                    " is an encoder (" + model.architecture + "); use task: embed");
  PromptReader input(job.input, model.vocab, job.task == "score");
  check_rows(input, job, model);

  const auto t_load = Clock::now();
  std::unique_ptr<Backend> backend = make_cpu_backend(job.threads);
  Transformer transformer(model, *backend);
  const double load_s = seconds_since(t_load);
  ResultWriter writer(job, model, input.rows(), resume);
  if (world_rank == 0)
    std::printf("lowsync: %s %s (%s, %lld rows, %d layers) on %s; model loaded in %.2f s%s\n", job.task.c_str(),
                job.model.c_str(), model.architecture.c_str(), static_cast<long long>(input.rows()), model.n_layers,
                backend->name().c_str(), load_s,
                resume ? (", resuming after row " + std::to_string(writer.rows_done())).c_str() : "");

  const auto t_run = Clock::now();
  int64_t tokens_in = 0, tokens_out = 0, batches = 0;
  const int64_t first = writer.rows_done();
  while (writer.rows_done() < input.rows()) {
    // The next batch: consecutive rows while they fit in max_tokens and max_sequences.
    const int64_t r0 = writer.rows_done();
    int64_t r1 = r0, budget = 0;
    while (r1 < input.rows() && r1 - r0 < job.batch.max_sequences) {
      const int64_t n = pass_length(input, job.task, r1);
      if (r1 > r0 && budget + n > job.batch.max_tokens) break;
      budget += n;
      ++r1;
    }
    TokenRows prompts, targets;
    for (int64_t r = r0; r < r1; ++r) {
      prompts.push_back(input.tokens(r));
      if (job.task == "score") targets.push_back(input.targets(r));
    }

    const auto t0 = Clock::now();
    std::vector<RowResult> results;
    if (job.task == "generate")
      results = generate_batch(transformer, job.generate, prompts, r0);
    else if (job.task == "score")
      results = score_batch(transformer, prompts, targets);
    else
      results = embed_batch(transformer, job.embed, prompts);
    const float ms = static_cast<float>(seconds_since(t0) * 1e3);
    for (auto& r : results) {
      r.latency_ms = ms;
      tokens_out += static_cast<int64_t>(r.tokens.size());
    }
    tokens_in += budget;
    ++batches;
    writer.append(results);
    if (world_rank == 0) {
      const double s = seconds_since(t_run);
      std::printf("lowsync: rows %lld/%lld  batch %lld rows in %.0f ms  %.0f prompt tok/s%s\n",
                  static_cast<long long>(writer.rows_done()), static_cast<long long>(input.rows()),
                  static_cast<long long>(r1 - r0), ms, tokens_in / s,
                  job.task == "generate" ? (", " + std::to_string(static_cast<long long>(tokens_out / s)) + " new tok/s").c_str() : "");
      std::fflush(stdout);
    }
  }
  writer.finish();
  if (world_rank == 0) {
    const double s = seconds_since(t_run);
    std::printf("lowsync: done: %lld rows in %lld batches, %.2f s; %lld prompt tokens (%.0f tok/s)",
                static_cast<long long>(input.rows() - first), static_cast<long long>(batches), s,
                static_cast<long long>(tokens_in), s > 0 ? tokens_in / s : 0.0);
    if (job.task == "generate")
      std::printf(", %lld new tokens (%.0f tok/s)", static_cast<long long>(tokens_out), s > 0 ? tokens_out / s : 0.0);
    std::printf("; output %s\n", job.output.c_str());
  }
}

}  // namespace lowsync
