#include "jobs/profile_job.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "io/error.h"
#include "io/model_config.h"
#include "jobs/make_backend.h"
#include "planning/profiler.h"

namespace lowsync {

namespace {

// A problem with the profile's path found before, not after, the measurements.
void check_writable(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  if (!std::filesystem::is_directory(dir)) throw UserError(path + ": cannot write the profile: no directory " + dir.string());
  if (access(dir.c_str(), W_OK) != 0) throw UserError(path + ": cannot write the profile: directory not writable");
}

void print_table(const Profile& p, const std::string& out_path) {
  std::printf("lowsync: profile of %d rank%s on %s in %.1f s -> %s\n", p.world, p.world == 1 ? "" : "s",
              p.model.c_str(), p.measure_seconds, out_path.c_str());
  std::printf("  GFLOP/s at M = %d (prefill) / 1 (decode, one sequence) / %d (decode, full batch)\n", p.prefill_rows,
              p.decode_rows);
  std::printf("  %4s  %-16s  %-23s  %-23s  %9s  %10s\n", "rank", "host", "layer GFLOP/s", "head GFLOP/s",
              "read GB/s", "usable GiB");
  for (const auto& r : p.ranks) {
    char layers[64], head[64];
    std::snprintf(layers, sizeof layers, "%.1f / %.1f / %.1f", r.layers.prefill, r.layers.decode_one,
                  r.layers.decode_batch);
    std::snprintf(head, sizeof head, "%.1f / %.1f / %.1f", r.head.prefill, r.head.decode_one, r.head.decode_batch);
    std::printf("  %4d  %-16s  %-23s  %-23s  %9.2f  %10.2f\n", r.rank, r.host.c_str(), layers, head,
                r.read_bytes_per_s * 1e-9, double(r.usable_memory_bytes) / double(1 << 30));
  }
  auto link_row = [](const std::string& what, const LinkModel& l) {
    std::printf("  %-24s  %10.2f  %14.1f\n", what.c_str(), l.latency_s * 1e6, l.bytes_per_s * 1e-6);
  };
  if (!p.all_reduce.empty() || !p.point_to_point.empty())
    std::printf("  %-24s  %10s  %14s\n", "link", "latency us", "bandwidth MB/s");
  for (const auto& a : p.all_reduce) {
    std::string ranks;
    for (int r : a.ranks) ranks += (ranks.empty() ? "" : ",") + std::to_string(r);
    link_row("all-reduce " + ranks, a.link);
  }
  for (const auto& l : p.point_to_point)
    link_row("send " + std::to_string(l.from) + "<->" + std::to_string(l.to), l.link);
}

}  // namespace

void profile_job(const JobConfig& job_as_given, const std::string& out_path, double budget_s) {
  Communicator world(MPI_COMM_WORLD, "world");
  JobConfig job = with_resolved_threads(job_as_given, world);  // `threads: auto` (collective)
  ModelConfig model;
  std::unique_ptr<Backend> backend;
  world.agree([&] {
    if (!(budget_s > 0)) throw UserError("--budget must be a positive number of seconds");
    if (world.rank() == 0) check_writable(out_path);
    model = load_model_config(job.model);
    job = with_resolved_weights(job);  // `weights.dtype: auto`: the checkpoint's
    backend = make_backend(job, world);
  });
  // The row counts a job's passes have: a prefill batch (capped: beyond a few hundred rows sgemm's
  // rate no longer changes, and the timing would only grow) and a full decode batch.
  const int prefill_rows = std::min(job.batch.max_tokens, 512);
  const int decode_rows = job.batch.max_sequences;
  const Profile profile = measure_profile(model, *backend, world, prefill_rows, decode_rows, job.threads, budget_s);
  world.agree([&] {
    if (world.rank() == 0) profile.save(out_path);
  });
  if (world.rank() == 0) print_table(profile, out_path);
}

}  // namespace lowsync
