// `lowsync profile`: what each rank computes and how fast its links are, measured the way a job
// will use them.
//
// Compute: every rank at the same time (as in a job, where ranks sharing a host share its cores,
// caches and memory), through the job's own Backend::matmul on the model's own product shapes, so
// that the figures inherit the engine's kernel choice (sgemm, sgemv, the one-read kernel for a few
// decode rows). A figure is the best of a few timing windows, each a fraction of a second of
// back-to-back passes: a sustained rate, not a burst. A burst would hide exactly what the cost
// model must see: a rank throttled by a CPU quota (CFS runs it at full speed for the first part
// of every period), or one whose turbo clock does not last.
//
// Links: every group size g in 2..world that divides world, the groups [i g, (i + 1) g) all-reducing
// at the same time; ping-pong between neighbouring ranks. Per message size, the fastest of many short
// loops of operations (see time_op); a group's time is its slowest member's (a collective ends for
// the group when it ends for the last rank).
#include "planning/profiler.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "mpi_comm/communicator.h"

#ifndef LOWSYNC_VERSION
#define LOWSYNC_VERSION "dev"
#endif

namespace lowsync {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The largest of every rank's `seconds`, so that all ranks take the same decision from it
// (repeat counts must agree, or the ranks' collectives would not match).
double max_over(Communicator& world, double seconds) {
  int64_t ns = static_cast<int64_t>(std::ceil(seconds * 1e9));
  world.all_reduce_max(&ns, 1);
  return double(ns) * 1e-9;
}

// Every rank's `local` (the same length on every rank), rank by rank: an all-gather of doubles
// built from a sum, each rank filling only its own slot.
std::vector<double> gather_to_all(Communicator& world, const std::vector<double>& local) {
  const size_t n = local.size();
  std::vector<double> all(n * world.size(), 0.0);
  std::copy(local.begin(), local.end(), all.begin() + n * world.rank());
  world.all_reduce(all.data(), static_cast<int64_t>(all.size()));
  return all;
}

// `text` of rank `root`, on every rank.
std::string broadcast_string(Communicator& world, std::string text, int root) {
  int64_t len = static_cast<int64_t>(text.size());
  world.broadcast(&len, sizeof len, root);
  text.resize(len);
  world.broadcast(text.data(), len, root);
  return text;
}

// ---- timing plan ----------------------------------------------------------------------------

// Shares of the budget: compute and links; the rest is left for allocation, warm-ups and gathers.
constexpr double kComputeShare = 0.5, kLinkShare = 0.4;
constexpr int kWindows = 3;             // best of this many timing windows per compute figure
constexpr double kLoopSeconds = 2e-4;   // a link timing loop's length (about)
// Loops per message size: at least 20, as on a loaded host a few loops in a row may all have been
// preempted; at most 300, plenty where nothing is.
constexpr int kLinkMinLoops = 20, kLinkMaxLoops = 300;
constexpr int kMinOps = 4;              // operations per loop at least, unless one is long:
constexpr double kLongOpSeconds = 1e-2;  // beyond this the start skew (a latency) no longer matters

// The best rate (work per second) of `pass` over a few windows of back-to-back passes that together
// take about `allowance_s`. Collective: the ranks run their windows at the same time.
template <class Pass>
double best_rate(Communicator& world, double work_per_pass, double allowance_s, Pass&& pass) {
  world.barrier();
  const double warm = max_over(world, pass());  // first touch, library buffers
  // A pass too long for several windows in the allowance is timed once: the figure of a big model
  // is worth overrunning the budget for, and one pass is the least that measures it.
  const int windows = 2 * warm > allowance_s ? 1 : kWindows;
  const double window_s = allowance_s / (windows + 1);
  double best = 0;
  for (int w = 0; w < windows; ++w) {
    world.barrier();
    const auto t0 = Clock::now();
    int64_t passes = 0;
    do {
      pass();
      ++passes;
    } while (seconds_since(t0) < window_s);
    best = std::max(best, double(passes) * work_per_pass / seconds_since(t0));
  }
  return best;
}

// ---- compute: matrix products -----------------------------------------------------------------

// y [M, out] = x [M, in] w^T with w [out, in], as Backend::matmul takes it.
struct Product {
  int64_t out = 0, in = 0;
};

// One layer's products at full width (no tensor-parallel split): Q, K, V, attention-out, FFN
// up (and gate, for gated FFNs), down.
std::vector<Product> layer_products(const ModelConfig& m) {
  std::vector<Product> p = {{m.q_dim(), m.hidden}, {m.kv_dim(), m.hidden}, {m.kv_dim(), m.hidden},
                            {m.hidden, m.q_dim()}, {m.intermediate, m.hidden}};
  if (m.gated_ffn()) p.push_back({m.intermediate, m.hidden});
  p.push_back({m.hidden, m.intermediate});
  return p;
}

// Random values in [-1, 1) from a cheap generator: the weights of a big model are hundreds of
// millions of floats, and their values only need to be ordinary numbers (no zeros, no denormals).
std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = float(int32_t(s >> 32)) * (1.0f / 2147483648.0f);
  }
  return v;
}

// Weights of some products on the backend, in `copies` copies, and activations for a row count M.
// Why copies: a decode step reads every layer's weights once, from memory, because the model's
// layers together do not fit in the cache; one layer's products timed over and over would stay in
// the cache and run faster than any job does (SmolLM2's layer is 14 MB against a 32 MB L3: the
// decode rates came out ~30% above what jobs reach). Each pass takes the next copy, so with copies
// summing to the model's layers the weights come from wherever a job's would.
class ProductBench {
 public:
  ProductBench(Backend& be, std::vector<Product> products, int copies = 1) : be_(be), products_(std::move(products)) {
    for (int c = 0; c < std::max(copies, 1); ++c) {
      std::vector<Tensor> copy;
      for (size_t i = 0; i < products_.size(); ++i) {
        const auto& p = products_[i];
        copy.push_back(be_.upload_weight(random_floats(p.out * p.in, c * products_.size() + i + 1), p.out, p.in));
      }
      weights_.push_back(std::move(copy));
    }
  }

  double flops(int M) const {
    double f = 0;
    for (const auto& p : products_) f += 2.0 * M * double(p.out) * double(p.in);
    return f;
  }

  void set_rows(int M) {
    x_.clear();
    y_.clear();
    for (const auto& p : products_) {
      Tensor x = be_.scratch(M, p.in);
      be_.from_host(random_floats(int64_t(M) * p.in, 99).data(), x);
      x_.push_back(x);
      y_.push_back(be_.scratch(M, p.out));
    }
  }

  // Every product once, with the next copy's weights; seconds until the results exist (a device
  // backend runs asynchronously: copying one element back waits for its stream).
  double pass() {
    const auto t0 = Clock::now();
    const std::vector<Tensor>& w = weights_[next_copy_];
    next_copy_ = (next_copy_ + 1) % weights_.size();
    for (size_t i = 0; i < products_.size(); ++i) be_.matmul(x_[i], w[i], nullptr, y_[i]);
    Tensor last = y_.back();
    last.rows = last.cols = 1;
    float sink;
    be_.to_host(last, &sink);
    return seconds_since(t0);
  }

 private:
  Backend& be_;
  std::vector<Product> products_;
  std::vector<std::vector<Tensor>> weights_;  // [copy][product]
  size_t next_copy_ = 0;
  std::vector<Tensor> x_, y_;
};

// Copies of one layer's products that a decode step's weight reads need: as many as the model has
// layers, at most 512 MiB of them (beyond any cache) and a quarter of the rank's usable memory.
int layer_copies(const ModelConfig& m, const std::vector<Product>& layer, int64_t usable_bytes) {
  double bytes = 0;
  for (const auto& p : layer) bytes += double(p.out) * double(p.in) * sizeof(float);
  const double cap = std::min<double>(double(int64_t(512) << 20), double(usable_bytes) / 4);
  return std::clamp(int(cap / std::max(bytes, 1.0)), 1, std::max(m.n_layers, 1));
}

// GFLOP/s at the three row counts of MatmulRates.
MatmulRates product_rates(Communicator& world, ProductBench& bench, int prefill_rows, int decode_rows,
                          double allowance_s) {
  auto rate = [&](int M) {
    bench.set_rows(M);
    return best_rate(world, bench.flops(M), allowance_s, [&] { return bench.pass(); }) * 1e-9;
  };
  MatmulRates r;
  r.prefill = rate(prefill_rows);
  r.decode_one = rate(1);
  r.decode_batch = rate(decode_rows);
  return r;
}

// ---- compute: memory ---------------------------------------------------------------------------

// Sum of a buffer with 8 independent vector accumulators (enough loads in flight that the loop is
// bound by memory, not by the add latency); as bench/cpu_probes.cpp. Returns the sum so that the
// compiler keeps the reads.
typedef float v8f __attribute__((vector_size(32)));
float stream_sum(const float* p, int64_t n) {
  v8f acc[8] = {};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 8; ++j) {
      v8f x;
      std::memcpy(&x, p + i + 8 * j, sizeof x);
      acc[j] += x;
    }
  float s = 0;
  for (int j = 0; j < 8; ++j)
    for (int k = 0; k < 8; ++k) s += acc[j][k];
  for (; i < n; ++i) s += p[i];
  return s;
}

int64_t last_level_cache_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l3 > 0) return l3;
  if (l2 > 0) return l2;
  return int64_t(32) << 20;
}

// Single-stream read bandwidth (bytes/s) over a buffer 4x the last-level cache, so that nearly
// every byte comes from memory, as a decode step's weights do.
double read_bandwidth(Communicator& world, int64_t usable_bytes, double allowance_s) {
  int64_t bytes = std::clamp<int64_t>(4 * last_level_cache_bytes(), int64_t(64) << 20, int64_t(1) << 30);
  bytes = std::max<int64_t>(std::min(bytes, usable_bytes / 4), int64_t(8) << 20);
  std::vector<float> buf(bytes / sizeof(float), 1.f);  // touched: the pages exist before timing
  volatile float sink = 0;
  return best_rate(world, double(bytes), allowance_s, [&] {
    const auto t0 = Clock::now();
    sink = sink + stream_sum(buf.data(), int64_t(buf.size()));
    return seconds_since(t0);
  });
}

// ---- compute: usable memory ------------------------------------------------------------------

int64_t read_int64(const std::string& path, bool* ok) {
  std::ifstream f(path);
  std::string word;
  *ok = static_cast<bool>(f >> word) && !word.empty() && std::isdigit(static_cast<unsigned char>(word[0]));
  return *ok ? std::stoll(word) : 0;
}

int64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("MemAvailable:", 0) == 0) return std::stoll(line.substr(13)) * 1024;  // kB
  return INT64_MAX;
}

// What this process's memory cgroups still allow: the least (limit - usage) over its cgroup and
// its ancestors (limits are hierarchical: a parent's caps its children), for the v1 memory
// controller and for cgroup v2 (at /sys/fs/cgroup or, in hybrid mode, /sys/fs/cgroup/unified).
// INT64_MAX when no limit is set or none can be read.
int64_t cgroup_headroom_bytes() {
  int64_t headroom = INT64_MAX;
  auto walk = [&](const std::string& root, std::string path, const char* limit_file, const char* usage_file) {
    while (true) {
      bool has_limit = false, has_usage = false;
      const std::string dir = root + path;
      const int64_t limit = read_int64(dir + "/" + limit_file, &has_limit);  // v2 "max": no limit
      const int64_t usage = read_int64(dir + "/" + usage_file, &has_usage);
      if (has_limit && has_usage && limit < (int64_t(1) << 60)) headroom = std::min(headroom, std::max<int64_t>(limit - usage, 0));
      if (path.empty() || path == "/") break;
      path = path.substr(0, path.find_last_of('/'));
    }
  };
  std::ifstream f("/proc/self/cgroup");
  for (std::string line; std::getline(f, line);) {
    // id:controllers:path; v2 is id 0 with no controllers.
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    std::stringstream list(controllers);
    bool memory = false;
    for (std::string c; std::getline(list, c, ',');) memory = memory || c == "memory";
    if (memory) walk("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes");
    if (controllers.empty()) {
      walk("/sys/fs/cgroup", path, "memory.max", "memory.current");
      walk("/sys/fs/cgroup/unified", path, "memory.max", "memory.current");
    }
  }
  return headroom;
}

}  // namespace

// The memory this rank may use: what the host (and its cgroups) still have, shared evenly by the
// ranks on the host. Collective over world.
int64_t usable_memory_bytes(Communicator& world) {
  MPI_Comm node;
  if (MPI_Comm_split_type(world.raw(), MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &node) != MPI_SUCCESS)
    throw MpiError("rank " + std::to_string(world.rank()) + ": MPI_Comm_split_type(SHARED) failed");
  const int ranks_here = Communicator(node, "profile_node").size();
  return std::min(mem_available_bytes(), cgroup_headroom_bytes()) / ranks_here;
}

namespace {

// ---- links -----------------------------------------------------------------------------------

// 4 B .. 1 MiB in powers of 4: a decode step's all-reduce (hidden x rows x 4 B: a few KB) up to a
// prefill's (hundreds of KB per layer on small models, where larger ones are bandwidth-bound anyway).
std::vector<int64_t> message_sizes() {
  std::vector<int64_t> s;
  for (int64_t b = 4; b <= (int64_t(1) << 20); b *= 4) s.push_back(b);
  return s;
}

// Seconds of one `op`: the fastest of many short loops of back-to-back operations, repeated until
// `allowance_s` is spent. Short loops (about kLoopSeconds, long enough to dwarf the timer and the
// barrier's skew) and the fastest of them, because on a shared host a loop during which either end
// of the link was preempted times the scheduler, not the link; the shorter the loops, the more of
// them run whole. A loop's time is its slowest rank's (an operation ends for the group when it ends
// for its last rank), and each loop runs at least kMinOps operations where they are short: the
// ranks leave the barrier up to a one-way latency apart, and on a link of 0.5 ms latency a rank
// that starts its single all-reduce late finds its partner's data already there and times ~10 us.
// Taking each rank's own fastest loop and then the slowest rank (as this did) kept exactly those
// loops: over a 500 us link the all-reduce fitted 8 us of latency while a ping took 540 us.
// Every rank of world calls it, `active` false on ranks idle in this measurement.
// `per_op` divides a loop's time (2 for a ping-pong, to give one way).
template <class Op>
double time_op(Communicator& world, double allowance_s, Op&& op, bool active, double per_op = 1) {
  world.barrier();
  double latest = 0;  // this rank's seconds per operation, as last timed
  if (active) {
    op();  // warm-up: connection setup, buffer registration
    const auto t0 = Clock::now();
    op();
    latest = seconds_since(t0);
  }
  const auto start = Clock::now();
  double best = INFINITY;
  for (int r = 0;; ++r) {
    // The ranks must agree on each loop's length (at the slowest rank's latest rate) and on when to
    // stop (as soon as any rank has spent the allowance), or their operations would not match.
    // The agreed rate is also the previous loop's time: its slowest rank's.
    int64_t agreed[2] = {static_cast<int64_t>(std::ceil(latest * 1e9)),
                         r >= kLinkMaxLoops || (r >= kLinkMinLoops && seconds_since(start) >= allowance_s) ? 1 : 0};
    world.all_reduce_max(agreed, 2);
    if (r > 0) best = std::min(best, double(agreed[0]) * 1e-9);  // loop 0's figure is the warm-up's
    if (agreed[1]) break;
    const double op_s = std::max(double(agreed[0]) * 1e-9, 1e-8);
    const int64_t ops = std::clamp<int64_t>(int64_t(kLoopSeconds / op_s), op_s < kLongOpSeconds ? kMinOps : 1, 20000);
    world.barrier();
    const auto t0 = Clock::now();
    if (active)
      for (int64_t i = 0; i < ops; ++i) op();
    latest = active ? seconds_since(t0) / double(ops) : 0.0;
  }
  return active ? best / per_op : 0.0;
}

// The divisors of world in 2..world: the group sizes a dp x tp grid can give.
std::vector<int> group_sizes(int world) {
  std::vector<int> g;
  for (int d = 2; d <= world; ++d)
    if (world % d == 0) g.push_back(d);
  return g;
}

}  // namespace

// Weighted least squares of t = a + b x (a latency, b = 1 / bandwidth) minimising the *relative*
// error sum ((a + b x_i - t_i) / t_i)^2, i.e. weights 1 / t_i^2. Why relative: the sizes span six
// orders of magnitude; plain least squares is decided by the largest messages' absolute errors and
// puts the intercept wherever they leave it (often below zero), so small messages, the ones a
// decode step sends, would be predicted badly. Relative error gives each size the same say, so the
// fit is good at both ends: on the development machine's shared-memory transport within ~10% at
// 4 B .. 256 B and 35% at 64 KiB .. 1 MiB (no line does much better there: the transport changes
// protocol between 4 KiB and 64 KiB, where the line under-predicts by up to 3x). Robustness: a negative
// latency is refitted as a line through the origin (latency 0); a slope <= 0 (time not growing
// within the measured sizes) falls back to the best observed bytes / seconds, a lower bound of the
// true bandwidth, so that bandwidth is positive and finite.
LinkModel fit_link(const std::vector<LinkSample>& samples) {
  double S = 0, Sx = 0, Sxx = 0, St = 0, Sxt = 0, best_rate = 0;
  for (const auto& s : samples) {
    if (!(s.seconds > 0)) continue;  // below the timer's resolution: no information
    const double w = 1.0 / (s.seconds * s.seconds), x = double(s.bytes), t = s.seconds;
    S += w, Sx += w * x, Sxx += w * x * x, St += w * t, Sxt += w * x * t;
    best_rate = std::max(best_rate, x / t);
  }
  LinkModel m;
  if (S == 0) return m;
  const double det = S * Sxx - Sx * Sx;
  double a = 0, b = 0;
  if (det > 0) {
    a = (St * Sxx - Sx * Sxt) / det;
    b = (S * Sxt - Sx * St) / det;
  }
  if (det <= 0 || a < 0) {  // through the origin
    a = 0;
    b = Sxx > 0 ? Sxt / Sxx : 0;
  }
  if (b <= 0) {
    a = St / S;
    m.latency_s = a;
    m.bytes_per_s = best_rate;
    return m;
  }
  m.latency_s = a;
  m.bytes_per_s = 1.0 / b;
  return m;
}

Profile measure_profile(const ModelConfig& model, Backend& be, Communicator& world, int prefill_rows, int decode_rows,
                        int threads, double budget_s) {
  const CommCounters counters_before = world.counters();
  const auto start = Clock::now();
  const int W = world.size(), me = world.rank();
  const std::vector<int64_t> sizes = message_sizes();
  const std::vector<int> groups = group_sizes(W);

  // Compute, every rank at once.
  const int compute_figures = 3 * (model.is_decoder() ? 2 : 1) + 1;
  const double allowance = kComputeShare * budget_s / compute_figures;
  RankProfile mine;
  mine.rank = me;
  mine.threads = threads;
  mine.usable_memory_bytes = usable_memory_bytes(world);
  {
    const std::vector<Product> products = layer_products(model);
    ProductBench layer(be, products, layer_copies(model, products, mine.usable_memory_bytes));
    mine.layers = product_rates(world, layer, prefill_rows, decode_rows, allowance);
  }
  if (model.is_decoder()) {
    ProductBench head(be, {{model.vocab, model.hidden}});
    mine.head = product_rates(world, head, prefill_rows, decode_rows, allowance);
  }
  mine.read_bytes_per_s = read_bandwidth(world, mine.usable_memory_bytes, allowance);

  // Links. Per size, one window of each group size and of the two ping-pong phases.
  const double link_allowance = kLinkShare * budget_s / double((groups.size() + (W > 1 ? 1 : 0)) * sizes.size());
  std::vector<double> local = {mine.layers.prefill, mine.layers.decode_one, mine.layers.decode_batch,
                               mine.head.prefill,   mine.head.decode_one,   mine.head.decode_batch,
                               mine.read_bytes_per_s, double(mine.usable_memory_bytes), double(threads)};
  const size_t link_at = local.size();
  std::vector<float> buf(sizes.back() / sizeof(float), 0.f);  // zeros: sums stay 0, never denormal
  for (int g : groups) {
    Communicator group = world.split(me / g, me, "profile_allreduce_" + std::to_string(g));
    for (int64_t bytes : sizes)
      local.push_back(time_op(world, link_allowance, [&] { group.all_reduce(buf.data(), bytes / 4); }, true));
  }
  // Ping-pong between (r, r + 1): pairs starting at even r, then at odd r, each pair on its own.
  if (W > 1) {
    for (int phase = 0; phase < 2; ++phase) {
      const bool starts = me % 2 == phase && me + 1 < W, answers = me % 2 != phase && me >= 1;
      const int partner = starts ? me + 1 : me - 1;
      for (int64_t bytes : sizes) {
        auto ping_pong = [&] {
          if (starts) {
            world.send(buf.data(), bytes, partner, 7);
            world.recv(buf.data(), bytes, partner, 7);
          } else {
            world.recv(buf.data(), bytes, partner, 7);
            world.send(buf.data(), bytes, partner, 7);
          }
        };
        const double one_way = time_op(world, link_allowance / 2, ping_pong, starts || answers, 2);
        local.push_back(starts ? one_way : 0.0);
      }
    }
  }

  // Every rank's figures on every rank, so that all build the same Profile.
  local.push_back(seconds_since(start));
  const std::vector<double> all = gather_to_all(world, local);
  const size_t n = local.size();
  auto at = [&](int rank, size_t i) { return all[rank * n + i]; };

  Profile p;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  char date[32] = {};
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  p.date = broadcast_string(world, date, 0);
  p.lowsync_version = LOWSYNC_VERSION;
  p.model = model.dir;
  p.world = W;
  p.prefill_rows = prefill_rows;
  p.decode_rows = decode_rows;
  for (int r = 0; r < W; ++r) {
    RankProfile rp;
    rp.rank = r;
    rp.host = broadcast_string(world, host, r);
    rp.layers = {at(r, 0), at(r, 1), at(r, 2)};
    rp.head = {at(r, 3), at(r, 4), at(r, 5)};
    rp.read_bytes_per_s = at(r, 6);
    rp.usable_memory_bytes = static_cast<int64_t>(at(r, 7));
    rp.threads = static_cast<int>(at(r, 8));
    p.ranks.push_back(rp);
  }
  size_t i = link_at;
  for (int g : groups) {
    for (int first = 0; first < W; first += g) {
      AllReduceLink a;
      for (int r = first; r < first + g; ++r) a.ranks.push_back(r);
      for (size_t s = 0; s < sizes.size(); ++s) {
        double slowest = 0;
        for (int r : a.ranks) slowest = std::max(slowest, at(r, i + s));
        a.samples.push_back({sizes[s], slowest});
      }
      a.link = fit_link(a.samples);
      p.all_reduce.push_back(a);
    }
    i += sizes.size();
  }
  if (W > 1) {
    for (int phase = 0; phase < 2; ++phase, i += sizes.size())
      for (int r = phase; r + 1 < W; r += 2) {
        PointToPointLink l;
        l.from = r;
        l.to = r + 1;
        for (size_t s = 0; s < sizes.size(); ++s) l.samples.push_back({sizes[s], at(r, i + s)});
        l.link = fit_link(l.samples);
        p.point_to_point.push_back(l);
      }
    std::sort(p.point_to_point.begin(), p.point_to_point.end(),
              [](const PointToPointLink& a, const PointToPointLink& b) { return a.from < b.from; });
  }
  p.measure_seconds = at(0, n - 1);
  world.counters() = counters_before;
  return p;
}

}  // namespace lowsync
