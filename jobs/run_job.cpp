// A job, start to end: every rank checks what can be checked before any compute (job, model, every
// input row) and agrees on the outcome; rank 0 opens the output; then replicas take batches of
// consecutive rows -> task -> results to rank 0 -> append + flush -> progress line; a run report
// at the end, on stdout and in the output file. A signal stops it between batches (see
// jobs/stop_signal.h): what is computed is written, and the report says how to resume.
#include "jobs/run_job.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "io/error.h"
#include "io/log.h"
#include "io/model_config.h"
#include "io/prompts.h"
#include "jobs/continuous_generate.h"
#include "jobs/micro_batch_replan.h"
#include "jobs/score_windows.h"
#include "jobs/stopping.h"
#include "jobs/load_job.h"
#include "jobs/result_writer.h"
#include "jobs/run_report.h"
#include "jobs/runtime_tail.h"
#include "jobs/stop_signal.h"
#include "jobs/tensor_dump.h"
#include "jobs/tasks.h"
#include "jobs/work_queue.h"
#include "layers/model.h"
#include "mpi_comm/parallel_groups.h"
#include "mpi_comm/trace.h"
#include "mpi_comm/watchdog.h"

namespace lowsync {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Tokens a row puts through the model in one pass (score: over all its windows), and the longest
// sequence among them, which must fit the model's positions.
struct PassTokens {
  int64_t total = 0, longest = 0;
};
PassTokens pass_length(const PromptReader& in, const JobConfig& job, int64_t row) {
  if (job.task != "score") return {in.length(row), in.length(row)};
  PassTokens p;
  for (const ScoreWindow& w : score_windows(in.length(row), in.target_length(row), job.score)) {
    p.total += w.fed_end - w.begin;
    p.longest = std::max(p.longest, w.fed_end - w.begin);
  }
  return p;
}

// The rows this job computes (README: `rows`, `shard`).
void check_rows(const PromptReader& in, const JobConfig& job, const ModelConfig& model, const RowRange& range) {
  for (int64_t r = range.first; r < range.end; ++r) {
    const std::string where = in.path() + ": row " + std::to_string(r) + ": ";
    if (in.length(r) == 0) throw UserError(where + "empty prompt; every row needs at least one token");
    const int64_t n = pass_length(in, job, r).longest;
    if (n > model.max_positions)
      throw UserError(where + (job.task == "score" ? "prompt + targets" : "prompt") + " of " + std::to_string(n) +
                      " tokens exceeds the model's " + std::to_string(model.max_positions) + " positions" +
                      (model.positions_note.empty() ? "" : " (" + model.positions_note + ")") +
                      (job.task == "score" && job.score.window == 0
                           ? " (score.window scores a longer row in windows)"
                           : job.task == "score" ? " (score.window is " + std::to_string(job.score.window) + ")" : ""));
  }
}

// Consecutive rows of the whole input from row 0, each batch within max_tokens and max_sequences
// (a single longer row forms a batch of its own). Every run of a job cuts its rows along these
// batches (below), so that a row is computed in the same batch, and so with the same float rounding,
// whether the run covers the whole input, a shard of it or the rest of it after --resume.
std::vector<Batch> plan_batches(const PromptReader& in, const JobConfig& job) {
  std::vector<Batch> out;
  for (int64_t r0 = 0; r0 < in.rows();) {
    int64_t r1 = r0, tokens = 0;
    while (r1 < in.rows() && r1 - r0 < job.batch.max_sequences) {
      const int64_t n = pass_length(in, job, r1).total;
      if (r1 > r0 && tokens + n > job.batch.max_tokens) break;
      tokens += n;
      ++r1;
    }
    out.push_back({r0, r1});
    r0 = r1;
  }
  return out;
}

// The batches of `all` inside input rows [first, end), cut at first and end. Rows are input rows: a
// row's sampling stream and its results do not depend on which rows the job computes.
std::vector<Batch> batches_within(const std::vector<Batch>& all, int64_t first, int64_t end) {
  std::vector<Batch> out;
  for (const Batch& b : all)
    if (b.end_row > first && b.first_row < end) out.push_back({std::max(b.first_row, first), std::min(b.end_row, end)});
  return out;
}

// A shard's rows: the batches of `all` that start inside its nominal range [i N / n, (i + 1) N / n),
// so that no batch is split between shards and merged shards equal a run over the whole input.
RowRange shard_rows(const std::vector<Batch>& all, const RowRange& nominal, const JobConfig& job, int64_t input_rows) {
  auto starts_at_or_after = [&](int64_t row) {
    for (const Batch& b : all)
      if (b.first_row >= row) return b.first_row;
    return input_rows;
  };
  const RowRange r{starts_at_or_after(nominal.first), starts_at_or_after(nominal.end)};
  if (r.count() == 0)
    throw UserError(job.path + ": shard " + std::to_string(job.shard.index) + " of " + std::to_string(job.shard.count) +
                    " holds no rows: no batch starts in its rows " + std::to_string(nominal.first) + "-" +
                    std::to_string(nominal.end - 1) + " (batches of up to " + std::to_string(job.batch.max_sequences) +
                    " rows, batch.max_sequences); use fewer shards or smaller batches");
  return r;
}

// Fault injection for the fault tests: LOWSYNC_INJECT_FAULT=R:B makes world rank R throw when it
// starts its B-th batch (counting from 0), as a real failure mid-job would. R = `*`: whichever rank
// starts its B-th batch first; where the work queue decides which rank gets how many batches (a
// loaded rank may get fewer than B), that fault still comes whenever the job has more than
// (B x ranks) batches.
void maybe_inject_fault(int rank, int64_t batches_started) {
  const char* spec = std::getenv("LOWSYNC_INJECT_FAULT");
  if (!spec) return;
  int r = -1;
  long long b = -1;
  const bool any_rank = std::sscanf(spec, "*:%lld", &b) == 1;
  if ((any_rank || (std::sscanf(spec, "%d:%lld", &r, &b) == 2 && r == rank)) && b == batches_started)
    throw std::runtime_error("injected fault (LOWSYNC_INJECT_FAULT=" + std::string(spec) + ")");
}

// "1:02:03" or "2:03": an ETA or elapsed time for a progress line.
std::string clock_text(double seconds) {
  const long long s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lld:%02lld", s / 60, s % 60);
  return buf;
}

// Rank 0's progress line: rows done, tokens/s (prompt and generated tokens of the rows written,
// over this run's time) and the ETA at this run's row rate; at most one every `every` seconds,
// and always one for the last row.
class Progress {
 public:
  // range: the input rows of the output; first: the first input row this run computes.
  Progress(const JobConfig& job, const PromptReader& in, const RowRange& range, int64_t first)
      : job_(job), in_(in), range_(range), first_(first - range.first), t0_(Clock::now()) {}

  // done: rows of the output written so far (the output's row i is input row range.first + i).
  void written(int64_t done, const std::vector<RowResult>& rows) {
    const int64_t total = range_.count();
    for (size_t i = 0; i < rows.size(); ++i) {
      const int64_t row = range_.first + done - static_cast<int64_t>(rows.size()) + static_cast<int64_t>(i);
      tokens_ += pass_length(in_, job_, row).total + static_cast<int64_t>(rows[i].tokens.size());
    }
    const double s = seconds_since(t0_);
    if (done < total && last_ >= 0 && s - last_ < job_.progress.every) return;
    last_ = s;
    const double rows_per_s = (done - first_) / std::max(s, 1e-9);
    const std::string eta = done == total ? "0:00" : clock_text((total - done) / std::max(rows_per_s, 1e-9));
    log::progress("lowsync: %lld/%lld rows (%.1f%%), %.1f tokens/s, %.2f rows/s, elapsed %s, ETA %s",
                  static_cast<long long>(done), static_cast<long long>(total),
                  100.0 * done / std::max<int64_t>(total, 1), tokens_ / std::max(s, 1e-9), rows_per_s,
                  clock_text(s).c_str(), eta.c_str());
  }

 private:
  const JobConfig& job_;
  const PromptReader& in_;
  RowRange range_;
  int64_t first_;  // rows of the output done before this run
  Clock::time_point t0_;
  double last_ = -1;  // seconds into the run of the last line printed
  int64_t tokens_ = 0;
};

}  // namespace

int run_job(const JobConfig& job, bool resume) {
  // Before anything slow (loading the model): a signal during setup stops the run at its first
  // batch boundary, with nothing computed and the output (if created) resumable.
  Communicator world(MPI_COMM_WORLD, "world");
  install_stop_handlers(world.rank() == 0, job.path);
  const bool root = world.rank() == 0;
  std::unique_ptr<PromptReader> input;
  RowRange range;            // the input rows this job computes; the output's rows
  std::vector<Batch> batches;  // of the whole input
  GenerateOptions gen;         // generate: the job's options with their stop rules for this model and input
  LoadedJob loaded = load_job(job, world, [&](const ModelConfig& model, const Plan&) {
    if (!model.is_decoder() && job.task != "embed")
      throw UserError(job.path + ": task '" + job.task + "' needs a decoder (llama or gpt2), but " + job.model +
                      " is an encoder (" + model.architecture + "); use task: embed");
    if (root && !job.trace.empty() && !std::ofstream(job.trace))
      throw UserError(job.trace + ": cannot write the trace file (key 'trace')");
    if (root && !job.debug.dump.empty()) {  // before the run, not after it
      const std::string probe = job.debug.dump_file + ".partial";
      if (!std::ofstream(probe))
        throw UserError(job.debug.dump_file + ": cannot write the tensor dump (key 'debug.dump_file')");
      std::remove(probe.c_str());
    }
    input = std::make_unique<PromptReader>(job.input, model.vocab, job.task == "score", job.generate.n);
    range = job.row_range(input->rows());
    batches = plan_batches(*input, job);
    if (job.shard.count > 0) range = shard_rows(batches, range, job, input->rows());
    check_rows(*input, job, model, range);
    if (job.task == "generate") gen = resolve_stops(job.generate, model, *input, job.path);
  });
  const ModelConfig& model = loaded.model;
  const Plan& plan = loaded.plan;
  ParallelGroups& groups = *loaded.groups;
  Transformer& transformer = *loaded.transformer;
  StageLink link(groups.pp, *loaded.backend);
  PipelineStage stage{transformer, link, plan.micro_batches};
  // debug.dump: the first replica's ranks tap their first pass (the others compute other rows).
  std::unique_ptr<TensorTaps> taps;
  if (!job.debug.dump.empty() && loaded.groups->replica_index == 0) {
    taps = std::make_unique<TensorTaps>(job.debug.dump);
    transformer.set_taps(taps.get());
  }

  // The output records the weights' dtype as resolved (`auto` is the checkpoint's), so that a
  // resumed run computes with the same weights.
  JobConfig written = job;
  written.weights_dtype = loaded.weights_dtype;
  std::unique_ptr<ResultWriter> writer;
  world.agree([&] {
    if (root)
      writer = std::make_unique<ResultWriter>(written, model, range, input->rows(), input->ids(range.first, range.count()),
                                              resume);
  });
  int64_t first = range.first + (root ? writer->rows_done() : 0);  // the first input row not done
  world.broadcast(&first, sizeof first, 0);
  // plan.runtime: the runtime planner, and the tp group the job's tail may run on.
  std::unique_ptr<RuntimeTail> runtime;
  if (job.plan.runtime)
    runtime = make_runtime_tail(job, model, plan, world, *loaded.backend, transformer, *input,
                                batches_within(batches, first, range.end));
  // parallel.micro_batches: auto in a pipelined generate job: the count re-chosen as it runs.
  std::unique_ptr<MicroBatchReplan> replan;
  world.agree([&] { replan = make_micro_batch_replan(job, groups, plan.micro_batches); });
  // The passes the runtime planner timed at its start are not the job's (the run report's counts).
  const int64_t timed_passes = transformer.forward_passes(), timed_tokens = transformer.tokens_processed();
  const std::string rows = job.subset() ? "rows " + std::to_string(range.first) + "-" + std::to_string(range.end - 1) +
                                              " of " + std::to_string(input->rows())
                                        : std::to_string(input->rows()) + " rows";
  const std::string threads = job.threads == 0 ? ", threads auto (" + std::to_string(loaded.threads) + " on rank 0)" : "";
  const std::string wait = groups.tp.size() < 2 ? ""
                         : std::string(", syncs wait: ") + sync_wait_name(groups.tp.sync_wait()) +
                               (job.parallel.sync_wait == SyncWait::Auto ? " (auto, rank 0)" : "");
  log::info("lowsync: %s %s (%s, %s, %d layers) on %d rank(s), %s, %s backend%s%s; model loaded in %.2f s%s",
            job.task.c_str(), model.dir.c_str(), model.architecture.c_str(), rows.c_str(), model.n_layers, world.size(),
            plan.describe().c_str(), loaded.backend->name().c_str(), threads.c_str(), wait.c_str(), loaded.load_seconds,
            resume ? (", resuming after row " + std::to_string(first)).c_str() : "");

  // From here on an error on one rank cannot be agreed (the others are inside collectives): the
  // failing rank reports and aborts every rank. Rows already written stay, marked done.
  if (!job.trace.empty()) trace::start(world);
  auto watch = std::make_unique<watchdog::Guard>(job.mpi_timeout, world.rank());
  const auto t_run = Clock::now();
  int64_t new_tokens = 0;
  int64_t tail_passes = 0, tail_tokens = 0;  // plan.runtime: the tp tail's forward passes and tokens
  PhaseTimes phases;
  int stopped_by = 0;  // rank 0: the signal that ended the run early
  try {
    WorkQueue queue(groups, batches_within(batches, first, range.end), writer.get());
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
      trace::Span span("batch", "batch " + std::to_string(b.first_row) + "-" + std::to_string(b.end_row - 1));
      if (job.task == "generate")
        results = generate_batch(stage, gen, prompts, b.first_row, phases);
      else if (job.task == "score")
        results = score_batch(stage, job.score, prompts, targets, b.first_row);
      else
        results = embed_batch(stage, job.embed, prompts, b.first_row);
      const float ms = static_cast<float>(seconds_since(t0) * 1e3);
      if (job.task != "generate") {  // score and embed: one prefill pass per batch
        phases.prefill_s += ms / 1e3;
        ++phases.prefill_passes;
      }
      for (auto& r : results) {
        r.latency_ms = ms;
        new_tokens += static_cast<int64_t>(r.tokens.size());
      }
      return results;
    };
    Progress progress(job, *input, range, first);
    auto on_written = [&](int64_t done, const std::vector<RowResult>& rows) { progress.written(done, rows); };
    if (job.task == "generate" && job.batch.continuous) {
      // Continuous batching: take batches while sequence slots are free, one pass at a time (in a
      // pipeline, one micro-batch's pass at a time; every stage of the replica takes batches at
      // the same visit, see jobs/continuous_generate.h).
      int64_t longest = 0;
      for (int64_t r = first; r < range.end; ++r)
        longest = std::max(longest, ContinuousGenerator::row_need(model, job.generate, input->length(r)));
      // `q`'s batches through `stage`; rank 0 tells the runtime planner (if any) every pass it timed.
      auto run_continuous = [&](WorkQueue& q, PipelineStage& stage, RuntimeMode mode) {
        ContinuousGenerator generator(stage, job, gen, *input, longest, phases);
        q.set_on_written(on_written);
        MicroBatchReplan* const micro = mode == RuntimeMode::DataParallel ? replan.get() : nullptr;
        auto hand_in = [&](ContinuousGenerator::Finished finished) {
          for (auto& [index, results] : finished) {
            for (const RowResult& r : results) new_tokens += static_cast<int64_t>(r.tokens.size());
            q.complete(index, std::move(results));
          }
        };
        for (bool more = true;;) {
          while (more && generator.wants_rows()) {
            const int64_t index = q.take();
            if (index < 0) {
              more = false;
              break;
            }
            maybe_inject_fault(world.rank(), batches_started++);
            generator.admit(index, q.batch(index));
            // A pipeline's micro-batch count, re-chosen from the passes so far (every stage together).
            if (micro) {
              const int64_t rows_left = root ? range.count() - writer->rows_done() : -1;
              hand_in(micro->between_batches(generator, seconds_since(t_run), rows_left));
            }
          }
          if (generator.idle()) break;
          hand_in(generator.step());
          q.answer_arrived();
          if (runtime && root) runtime->measured(mode, generator.last_pass());
          if (micro) micro->measured(generator);
        }
        q.finish();
      };
      if (runtime && root) runtime->attach(queue, t_run);
      run_continuous(queue, stage, RuntimeMode::DataParallel);
      stopped_by = queue.stopped_by();
      if (runtime) {
        // Rank 0's queue knows where the runtime planner held the batches back (if it did).
        // (Its batches may have been cut by smaller hand-outs: the tail starts at a row.)
        int64_t tail[2] = {root ? queue.first_row_held_back() : -1, stopped_by};
        world.broadcast(tail, sizeof tail, 0);
        if (tail[1] == 0 && tail[0] >= 0) {
          // The tail: every rank in one tp group, its share viewed from the whole model it holds.
          runtime->tail_first_row = tail[0];
          Transformer& tail_model = *runtime->model;
          const int64_t passes0 = tail_model.forward_passes(), tokens0 = tail_model.tokens_processed();
          WorkQueue tail_queue(*runtime->groups, batches_within(runtime->batches, tail[0], range.end), writer.get());
          StageLink tail_link(runtime->groups->pp, *loaded.backend);  // one stage: nothing is sent
          PipelineStage tail_stage{tail_model, tail_link, 1};
          run_continuous(tail_queue, tail_stage, RuntimeMode::TensorParallel);
          stopped_by = tail_queue.stopped_by();
          tail_passes = tail_model.forward_passes() - passes0;  // the job's, not the timed ones at the start
          tail_tokens = tail_model.tokens_processed() - tokens0;
        }
      }
    } else {
      queue.run(compute, on_written);
      stopped_by = queue.stopped_by();
    }
  } catch (const OutputError& e) {
    // Only rank 0 writes, and its message names the file: no rank needed. The writer has closed
    // the output; on one rank the error can end the process normally, else it must stop the others
    // (they wait in the work queue or in collectives).
    if (world.size() == 1) throw;
    log::error(e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  } catch (const std::exception& e) {
    log::error("rank " + std::to_string(world.rank()) + ": " + e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const double wall_s = seconds_since(t_run);
  watch.reset();
  if (!job.trace.empty()) {
    const int64_t events = trace::finish(world, job.trace);
    if (root) std::printf("lowsync: trace of %lld events written to %s\n", static_cast<long long>(events), job.trace.c_str());
  }

  // Every rank learns how the run ended (only rank 0 may know: a replica told "no more batches"
  // does not know why), so that all exit with the same status.
  int64_t ending[2] = {stopped_by, root ? range.first + writer->rows_done() : 0};  // input row where done rows end
  world.all_reduce_max(ending, 2);
  const bool stopped = ending[1] < range.end;

  // The run report: every rank's split of time and traffic, gathered to all.
  CommCounters c = groups.tp.counters();
  if (runtime) {  // the tail's tp syncs count as the replica's communication
    const CommCounters& t = runtime->groups->tp.counters();
    c.seconds += t.seconds;
    c.calls += t.calls;
    c.bytes += t.bytes;
    c.wire_bytes += t.wire_bytes;
  }
  const double mine[kReportFields] = {wall_s - c.seconds - groups.pp.counters().seconds, c.seconds, double(c.calls), double(c.bytes),
                                      double(transformer.forward_passes() - timed_passes + tail_passes),
                                      double(transformer.tokens_processed() - timed_tokens + tail_tokens),
                                      double(transformer.weight_bytes() + (runtime ? runtime->model->weight_bytes() : 0)),
                                      proc_status_mib("VmHWM"),
                                      proc_status_mib("RssAnon"), phases.prefill_s, double(phases.prefill_passes),
                                      phases.decode_s, double(phases.decode_steps), groups.pp.counters().seconds,
                                      double(groups.pp.counters().bytes), double(transformer.streamed_bytes()),
                                      transformer.stream_stall_seconds(), c.wire_bytes, double(loaded.threads),
                                      double(loaded.pool_server ? loaded.pool_server->bytes_served() : 0)};
  std::vector<double> all(kReportFields * world.size());
  world.all_gather(mine, kReportFields, all.data());
  double replicas_new = static_cast<double>(new_tokens);
  groups.dp.all_reduce(&replicas_new, 1);  // over replicas; a replica's ranks agree on its count
  const int64_t total_new = static_cast<int64_t>(replicas_new);
  const std::string how = stopped ? "stopped by " + signal_name(static_cast<int>(ending[0])) : "complete";
  if (root) {
    RunTotals totals;
    totals.wall_s = wall_s;
    totals.rows = ending[1] - first;
    totals.new_tokens = total_new;
    totals.task = job.task;
    totals.first_row = first;
    totals.ended = how;
    totals.previous_json = writer->previous_report_json();
    totals.scored_tokens = writer->scored_tokens();
    totals.sum_logprob = writer->sum_logprob();
    if (replan) {
      totals.micro_batch_json = replan->planner().json();
      totals.micro_batch_text = replan->planner().text();
    }
    if (runtime) {
      runtime->planner->finish(wall_s);
      totals.runtime_json = runtime->json();
      totals.runtime_text = runtime->text();
    }
    const std::string report = run_report(plan, model, all, totals);
    writer->finish(report, run_report_json(plan, model, all, totals), plan.to_yaml(model));
    if (stopped) {
      log::summary_block(report);
      log::notice("lowsync: %s after %lld/%lld rows; resume with: lowsync run %s --resume", how.c_str(),
                  static_cast<long long>(ending[1] - range.first), static_cast<long long>(range.count()),
                  job.path.c_str());
    } else {
      log::summary("lowsync: done; output %s", job.output.c_str());
      log::summary_block(report);
    }
  }
  if (!job.debug.dump.empty()) {
    // Last, so that a dump that cannot be written costs none of the results above.
    try {
      const int n = write_tensor_dump(world, taps.get(), job.debug.dump_file);
      if (root) log::summary("lowsync: debug.dump: %d tensors of the first pass written to %s", n, job.debug.dump_file.c_str());
    } catch (const UserError& e) {
      if (root) log::error(e.what());
      return 1;
    }
  }
  return stopped ? kExitStopped : 0;
}

}  // namespace lowsync
