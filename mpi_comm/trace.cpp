#include "mpi_comm/trace.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "mpi_comm/communicator.h"

namespace lowsync::trace {

namespace {

using Clock = std::chrono::steady_clock;
bool g_on = false;
Clock::time_point g_t0;
std::string g_events;  // this rank's events, each a JSON object followed by ",\n"
int g_rank = 0;
int64_t g_count = 0;

// This rank's clock reading at rank 0's `t0`: the offset between the two clocks is estimated by
// ping-pongs with rank 0, taking the one with the shortest round trip (its midpoint is the best
// estimate, off by at most half that round trip). Ranks on one host share a clock and find ~0;
// ranks on different hosts do not.
Clock::time_point common_start(Communicator& world) {
  auto us = [](Clock::time_point t) { return std::chrono::duration<double, std::micro>(t.time_since_epoch()).count(); };
  const int kRounds = 16, kTag = 4710;
  double offset_us = 0;  // this rank's clock minus rank 0's
  for (int r = 1; r < world.size(); ++r) {
    if (world.rank() == 0) {
      double best_rtt = 1e300, best = 0;
      for (int k = 0; k < kRounds; ++k) {
        const double ta = us(Clock::now());
        double tr = 0;
        world.send(&ta, sizeof ta, r, kTag);
        world.recv(&tr, sizeof tr, r, kTag);
        const double tb = us(Clock::now());
        if (tb - ta < best_rtt) best_rtt = tb - ta, best = tr - (ta + tb) / 2;
      }
      world.send(&best, sizeof best, r, kTag);
    } else if (world.rank() == r) {
      for (int k = 0; k < kRounds; ++k) {
        double ta = 0;
        world.recv(&ta, sizeof ta, 0, kTag);
        const double tr = us(Clock::now());
        world.send(&tr, sizeof tr, 0, kTag);
      }
      world.recv(&offset_us, sizeof offset_us, 0, kTag);
    }
  }
  double t0 = world.rank() == 0 ? us(Clock::now()) : 0;
  world.broadcast(&t0, sizeof t0, 0);
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(t0 + offset_us)));
}

}  // namespace

void start(Communicator& world) {
  world.barrier();
  g_t0 = common_start(world);
  g_rank = world.rank();
  g_on = true;
  g_events.clear();
  g_count = 0;
}

bool enabled() { return g_on; }

double now_us() { return std::chrono::duration<double, std::micro>(Clock::now() - g_t0).count(); }

void complete(const char* category, const std::string& name, double start_us, double duration_us,
              const std::string& args) {
  if (!g_on) return;
  char head[160];
  std::snprintf(head, sizeof head, "{\"ph\": \"X\", \"pid\": %d, \"tid\": 0, \"ts\": %.3f, \"dur\": %.3f, \"cat\": \"%s\"",
                g_rank, start_us, duration_us, category);
  g_events += head;
  g_events += ", \"name\": \"" + name + "\"";  // names are lowsync's own: no characters to escape
  if (!args.empty()) g_events += ", \"args\": {" + args + "}";
  g_events += "},\n";
  ++g_count;
}

int64_t finish(Communicator& world, const std::string& path) {
  g_on = false;  // the gather below is not part of the job
  // Every rank's event text to rank 0: sizes first, then each rank's text in turn.
  double mine = static_cast<double>(g_events.size());
  std::vector<double> sizes(world.size());
  world.all_gather(&mine, 1, sizes.data());
  double count = static_cast<double>(g_count);
  world.all_reduce(&count, 1);
  const int kTag = 4711;
  if (world.rank() != 0) {
    if (!g_events.empty()) world.send(g_events.data(), static_cast<int64_t>(g_events.size()), 0, kTag);
    return static_cast<int64_t>(count);
  }
  std::ofstream f(path);
  f << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  for (int r = 0; r < world.size(); ++r) {
    f << "{\"ph\": \"M\", \"pid\": " << r << ", \"name\": \"process_name\", \"args\": {\"name\": \"rank " << r << "\"}},\n";
    f << "{\"ph\": \"M\", \"pid\": " << r << ", \"name\": \"process_sort_index\", \"args\": {\"sort_index\": " << r << "}},\n";
  }
  for (int r = 0; r < world.size(); ++r) {
    std::string text = g_events;
    if (r != 0) {
      text.resize(static_cast<size_t>(sizes[r]));
      if (!text.empty()) world.recv(text.data(), static_cast<int64_t>(text.size()), r, kTag);
    }
    f << text;
  }
  f << "{\"ph\": \"M\", \"pid\": 0, \"name\": \"trace_end\", \"args\": {}}\n]}\n";
  if (!f) throw std::runtime_error(path + ": cannot write the trace");
  return static_cast<int64_t>(count);
}

}  // namespace lowsync::trace
