// A job, start to end: every rank checks what can be checked before any compute (job, model, every
// input row) and agrees on the outcome; rank 0 opens the output; then replicas take batches of
// consecutive rows -> task -> results to rank 0 -> append + flush -> progress line; a run report
// at the end, on stdout and in the output file.
#include "jobs/run_job.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/make_backend.h"
#include "jobs/result_writer.h"
#include "jobs/spd_plan.h"
#include "jobs/tasks.h"
#include "jobs/work_queue.h"
#include "layers/model.h"
#include "mpi_comm/parallel_groups.h"

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

// Consecutive rows from `first`, each batch within max_tokens and max_sequences (a single longer
// row forms a batch of its own).
std::vector<Batch> plan_batches(const PromptReader& in, const JobConfig& job, int64_t first) {
  std::vector<Batch> out;
  for (int64_t r0 = first; r0 < in.rows();) {
    int64_t r1 = r0, tokens = 0;
    while (r1 < in.rows() && r1 - r0 < job.batch.max_sequences) {
      const int64_t n = pass_length(in, job.task, r1);
      if (r1 > r0 && tokens + n > job.batch.max_tokens) break;
      tokens += n;
      ++r1;
    }
    out.push_back({r0, r1});
    r0 = r1;
  }
  return out;
}

std::string spd_list(const std::vector<bool>& drop) {
  std::string s;
  for (size_t l = 0; l < drop.size(); ++l)
    if (drop[l]) s += (s.empty() ? "" : ",") + std::to_string(l);
  return s.empty() ? "none" : s;
}

// Per-rank figures gathered to every rank: [compute s, tp comm s, tp calls, tp bytes, passes, tokens,
// weight bytes, peak resident MiB, anonymous resident MiB].
constexpr int kReportFields = 9;

// A field of /proc/self/status in MiB (VmHWM: peak resident set; RssAnon: resident memory not
// backed by a file, i.e. excluding the memory-mapped checkpoint pages).
double proc_status_mib(const char* field) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  double kib = 0;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') kib = std::atof(line + n + 1);
  std::fclose(f);
  return kib / 1024.0;
}

int syncs_per_pass(const JobConfig& job, const ModelConfig& model, const std::vector<bool>& drop) {
  if (job.parallel.group() == 1) return 0;
  if (model.bp.enabled()) return (model.n_layers + model.bp.sync_every - 1) / model.bp.sync_every;
  return 2 * model.n_layers - static_cast<int>(std::count(drop.begin(), drop.end(), true));
}

// The same figures as JSON (output attribute `run_report_json`), for scripts and benchmarks.
std::string run_report_json(const JobConfig& job, const ModelConfig& model, const std::vector<bool>& drop,
                            const std::vector<double>& all, int world, double wall_s, int64_t rows,
                            int64_t new_tokens) {
  nlohmann::json j;
  j["tp"] = job.parallel.tp;
  j["dp"] = job.parallel.dp;
  j["ranks"] = world;
  j["layers"] = model.n_layers;
  std::vector<int> dropped;
  for (size_t l = 0; l < drop.size(); ++l)
    if (drop[l]) dropped.push_back(static_cast<int>(l));
  j["spd_drop"] = dropped;
  j["bp"] = job.parallel.bp;
  j["syncs_per_pass"] = syncs_per_pass(job, model, drop);
  j["wall_s"] = wall_s;
  j["rows"] = rows;
  j["new_tokens"] = new_tokens;
  for (int r = 0; r < world; ++r) {
    const double* f = &all[r * kReportFields];
    j["per_rank"].push_back({{"rank", r}, {"compute_s", f[0]}, {"tp_comm_s", f[1]}, {"tp_allreduces", int64_t(f[2])},
                             {"tp_bytes", int64_t(f[3])}, {"passes", int64_t(f[4])}, {"tokens", int64_t(f[5])},
                             {"weight_bytes", int64_t(f[6])}, {"peak_rss_mib", f[7]}, {"rss_anon_mib", f[8]}});
  }
  return j.dump();
}

std::string run_report(const JobConfig& job, const ModelConfig& model, const std::vector<bool>& drop,
                       const std::vector<double>& all, int world, double wall_s, int64_t rows, int64_t new_tokens) {
  std::ostringstream s;
  const int dropped = static_cast<int>(std::count(drop.begin(), drop.end(), true));
  const int tp = job.parallel.group();
  if (model.bp.enabled())
    s << "strategy: bp=" << job.parallel.bp << " dp=" << job.parallel.dp << " (" << world << " ranks), decoupled model of "
      << model.bp.sub_blocks << " sub-blocks per layer, merged every " << model.bp.sync_every << " layers\n";
  else
    s << "strategy: tp=" << tp << " dp=" << job.parallel.dp << " (" << world << " ranks), SPD drops " << dropped << "/"
      << model.n_layers << " attention syncs (layers " << spd_list(drop) << ")\n";
  s << "sync points per forward pass: " << syncs_per_pass(job, model, drop) << " all-reduces (TP baseline "
    << (tp == 1 ? 0 : 2 * model.n_layers) << ")\n";
  double tokens_total = 0;
  for (int r = 0; r < world; r += tp) tokens_total += all[r * kReportFields + 5];  // one rank per replica
  s << "throughput: " << rows << " rows in " << wall_s << " s, " << tokens_total / std::max(wall_s, 1e-9)
    << " tokens/s through the model";
  if (job.task == "generate") s << ", " << new_tokens / std::max(wall_s, 1e-9) << " new tokens/s";
  s << "\n";
  for (int r = 0; r < world; ++r) {
    const double* f = &all[r * kReportFields];
    const double per_token = f[5] > 0 ? f[3] / f[5] : 0;
    s << "rank " << r << ": compute " << f[0] << " s, tp communication " << f[1] << " s ("
      << (f[0] + f[1] > 0 ? 100 * f[1] / (f[0] + f[1]) : 0) << "%), " << static_cast<int64_t>(f[2])
      << " all-reduces over " << static_cast<int64_t>(f[4]) << " passes, " << per_token << " bytes sent per token, "
      << f[6] / 1048576.0 << " MiB of weights, peak RSS " << f[7] << " MiB\n";
  }
  return s.str();
}

// Fault injection for the fault tests: LOWSYNC_INJECT_FAULT=R:B makes world rank R throw when it
// starts its B-th batch (counting from 0), as a real failure mid-job would.
void maybe_inject_fault(int rank, int64_t batches_started) {
  const char* spec = std::getenv("LOWSYNC_INJECT_FAULT");
  int r = -1;
  long long b = -1;
  if (spec && std::sscanf(spec, "%d:%lld", &r, &b) == 2 && r == rank && b == batches_started)
    throw std::runtime_error("injected fault (LOWSYNC_INJECT_FAULT=" + std::string(spec) + ")");
}

}  // namespace

void run_job(const JobConfig& job, bool resume) {
  Communicator world(MPI_COMM_WORLD, "world");
  world.agree([&] {
    if (job.parallel.group() * job.parallel.dp != world.size())
      throw UserError(job.path + ": parallel." + (job.parallel.bp > 1 ? "bp" : "tp") + " x parallel.dp = " +
                      std::to_string(job.parallel.group()) + " x " + std::to_string(job.parallel.dp) +
                      " but mpirun started " + std::to_string(world.size()) + " ranks; they must be equal");
  });
  ParallelGroups groups = ParallelGroups::make(job.parallel.group(), job.parallel.dp);
  const bool root = world.rank() == 0;

  ModelConfig model;
  std::unique_ptr<PromptReader> input;
  std::vector<bool> drop;
  world.agree([&] {
    model = load_model_config(job.model);
    if (!model.is_decoder() && job.task != "embed")
      throw UserError(job.path + ": task '" + job.task + "' needs a decoder (llama or gpt2), but " + job.model +
                      " is an encoder (" + model.architecture + "); use task: embed");
    if (model.bp.enabled()) {
      if (job.parallel.tp > 1)
        throw UserError(job.path + ": " + job.model + " is a decoupled model; run it with parallel.bp, not parallel.tp");
      SubBlockRange(model, Shard{0, job.parallel.bp});  // bp must divide the sub-blocks
    } else {
      if (job.parallel.bp > 1)
        throw UserError(job.path + ": parallel.bp = " + std::to_string(job.parallel.bp) + " needs a decoupled model, and " +
                        job.model + " is not one (convert it with python/decoupled.py)");
      BlockShape::tp_share(model, Shard{0, job.parallel.tp});  // tp must divide heads and FFN width
    }
    drop = resolve_spd_drop(job, model);
    input = std::make_unique<PromptReader>(job.input, model.vocab, job.task == "score");
    check_rows(*input, job, model);
  });

  const auto t_load = Clock::now();
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> transformer;
  world.agree([&] {
    backend = make_backend(job, world);
    transformer = std::make_unique<Transformer>(model, *backend, TensorParallelGroup(&groups.tp, backend.get()), drop);
  });
  const double load_s = seconds_since(t_load);

  std::unique_ptr<ResultWriter> writer;
  world.agree([&] {
    if (root) writer = std::make_unique<ResultWriter>(job, model, input->rows(), resume);
  });
  int64_t first = root ? writer->rows_done() : 0;
  world.broadcast(&first, sizeof first, 0);
  if (root)
    std::printf("lowsync: %s %s (%s, %lld rows, %d layers) on %d rank(s), tp=%d dp=%d, %s backend; model loaded in "
                "%.2f s%s\n",
                job.task.c_str(), job.model.c_str(), model.architecture.c_str(), static_cast<long long>(input->rows()),
                model.n_layers, world.size(), job.parallel.tp, job.parallel.dp, backend->name().c_str(), load_s,
                resume ? (", resuming after row " + std::to_string(first)).c_str() : "");

  // From here on an error on one rank cannot be agreed (the others are inside collectives): the
  // failing rank reports and aborts every rank. Rows already written stay, marked done.
  const auto t_run = Clock::now();
  int64_t new_tokens = 0;
  try {
    WorkQueue queue(groups, plan_batches(*input, job, first), writer.get());
    int64_t batches_started = 0;
    auto compute = [&](const Batch& b) {
      maybe_inject_fault(world.rank(), batches_started++);
      TokenRows prompts, targets;
      for (int64_t r = b.first_row; r < b.end_row; ++r) {
        prompts.push_back(input->tokens(r));
        if (job.task == "score") targets.push_back(input->targets(r));
      }
      const auto t0 = Clock::now();
      std::vector<RowResult> results;
      if (job.task == "generate")
        results = generate_batch(*transformer, job.generate, prompts, b.first_row);
      else if (job.task == "score")
        results = score_batch(*transformer, prompts, targets, b.first_row);
      else
        results = embed_batch(*transformer, job.embed, prompts, b.first_row);
      const float ms = static_cast<float>(seconds_since(t0) * 1e3);
      for (auto& r : results) {
        r.latency_ms = ms;
        new_tokens += static_cast<int64_t>(r.tokens.size());
      }
      return results;
    };
    auto progress = [&](int64_t done) {
      const double s = seconds_since(t_run);
      std::printf("lowsync: rows %lld/%lld  %.1f s  %.1f rows/s\n", static_cast<long long>(done),
                  static_cast<long long>(input->rows()), s, (done - first) / std::max(s, 1e-9));
      std::fflush(stdout);
    };
    queue.run(compute, progress);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lowsync: error: rank %d: %s\n", world.rank(), e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const double wall_s = seconds_since(t_run);

  // The run report: every rank's split of time and traffic, gathered to all.
  const CommCounters& c = groups.tp.counters();
  const double mine[kReportFields] = {wall_s - c.seconds, c.seconds, double(c.calls), double(c.bytes),
                                      double(transformer->forward_passes()), double(transformer->tokens_processed()),
                                      double(transformer->weight_bytes()), proc_status_mib("VmHWM"),
                                      proc_status_mib("RssAnon")};
  std::vector<double> all(kReportFields * world.size());
  MPI_Allgather(mine, kReportFields, MPI_DOUBLE, all.data(), kReportFields, MPI_DOUBLE, world.raw());
  int64_t total_new = new_tokens;
  MPI_Allreduce(MPI_IN_PLACE, &total_new, 1, MPI_INT64_T, MPI_SUM, groups.dp.raw());  // per replica, tp ranks agree
  if (root) {
    const std::string report =
        run_report(job, model, drop, all, world.size(), wall_s, input->rows() - first, total_new);
    writer->finish(report, run_report_json(job, model, drop, all, world.size(), wall_s, input->rows() - first, total_new));
    std::printf("lowsync: done; output %s\n%s", job.output.c_str(), report.c_str());
  }
}

}  // namespace lowsync
