// mpi_comm/ under mpirun (ctest runs it at np = 2 and 4): every collective against the sum, order or
// copy it must produce, the counters the run report is built from, agreement on errors, and MPI
// errors turned into exceptions that name the call. Every rank runs every test; a failure on any
// rank makes mpirun exit non-zero.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <algorithm>
#include <numeric>
#include <vector>

#include "mpi_comm/communicator.h"
#include "mpi_comm/mpi_session.h"
#include "mpi_comm/wire_bytes.h"

using lowsync::AgreedError;
using lowsync::Communicator;
using lowsync::MpiError;

namespace {

Communicator world() { return Communicator(MPI_COMM_WORLD, "world"); }

TEST(Communicator, AllReduceSumsFloatsAndDoubles) {
  Communicator w = world();
  const int R = w.size();
  std::vector<float> f = {float(w.rank() + 1), 1.f, -float(w.rank())};
  std::vector<double> d = {0.5 * w.rank()};
  w.all_reduce(f.data(), 3);
  w.all_reduce(d.data(), 1);
  EXPECT_FLOAT_EQ(f[0], R * (R + 1) / 2.f);
  EXPECT_FLOAT_EQ(f[1], float(R));
  EXPECT_FLOAT_EQ(f[2], -R * (R - 1) / 2.f);
  EXPECT_DOUBLE_EQ(d[0], 0.5 * R * (R - 1) / 2);
}

// Rank r's partial of a compressed-sync test: values spread over several magnitudes (some blocks
// tiny, some large) and signs, the same on every rank for a given (r, n).
std::vector<float> partial_of(int r, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  uint64_t s = 0x9e3779b97f4a7c15ull * (r + 1) + static_cast<uint64_t>(n);
  for (auto& v : x) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const double u = double(s >> 11) / double(1ull << 53) - 0.5;  // [-0.5, 0.5)
    const double magnitude = std::pow(10.0, double((s >> 3) % 5) - 2);  // 1e-2 .. 1e2
    v = static_cast<float>(u * magnitude);
  }
  return x;
}

// parallel.sync_dtype: the compressed all-reduce's result, on every rank bit-identical, stays within
// the error its encoding allows of the exact sum (computed here in double from every rank's
// partial). bf16 rounds each partial and, in the reduce-scatter way, the sum (relative 2^-8 each).
// q8 (mpi_comm/sync_codec.h) keeps each 32-block's largest |x| exact and rounds the others to half
// a scale, the scale max |rest| / 127 rounded up to a bf16: per partial and value, 0 for the block's
// outlier, else <= (max |rest| / 127 (1 + 2^-10) + 2^-24) / 2; the reduce-scatter way adds the bf16
// rounding of the sum. fp32 is MPI's sum exactly. Sizes include ones that are not a multiple of the
// ranks or of a q8 block, and one large enough for the reduce-scatter way at 4 ranks.
TEST(Communicator, CompressedAllReduceStaysWithinItsEncodingError) {
  using lowsync::SyncDType;
  Communicator w = world();
  const int R = w.size();
  for (int64_t n : {1, 31, 33, 64 * R + 5, 4097, 40000}) {
    std::vector<std::vector<float>> parts;
    for (int r = 0; r < R; ++r) parts.push_back(partial_of(r, n));
    std::vector<double> exact(n, 0.0), magnitude(n, 0.0);
    for (int r = 0; r < R; ++r)
      for (int64_t i = 0; i < n; ++i) {
        exact[i] += parts[r][i];
        magnitude[i] += std::fabs(parts[r][i]);
      }
    // q8's error of each partial's value i: blocks of 32 from the vector's start (the gather way
    // pads the vector; the reduce-scatter way cuts chunks at multiples of 32, so the same blocks).
    std::vector<double> q8_error(n, 0.0);
    for (int r = 0; r < R; ++r)
      for (int64_t b0 = 0; b0 < n; b0 += 32) {
        const int64_t b1 = std::min<int64_t>(b0 + 32, n);
        int64_t top = b0;
        for (int64_t j = b0; j < b1; ++j)
          if (std::fabs(parts[r][j]) > std::fabs(parts[r][top])) top = j;
        double rest = 0;
        for (int64_t j = b0; j < b1; ++j)
          if (j != top) rest = std::max(rest, double(std::fabs(parts[r][j])));
        const double half_scale = (rest / 127 * (1 + std::ldexp(1.0, -7))) / 2;
        for (int64_t j = b0; j < b1; ++j) q8_error[j] += j == top ? 0 : half_scale;
      }
    for (SyncDType d : {SyncDType::F32, SyncDType::BF16, SyncDType::Q8}) {
      std::vector<float> x = parts[w.rank()];
      const int64_t calls = w.counters().calls, bytes = w.counters().bytes;
      w.all_reduce(x.data(), n, d);
      EXPECT_EQ(w.counters().calls, calls + 1);
      const bool gathered =
          d != SyncDType::F32 && lowsync::compressed_allreduce_algorithm(R, n, d) == lowsync::CompressedAllReduce::Gather;
      // The message counted: this rank's encoded partial (of the padded vector, or of the chunks).
      const int64_t chunk = (n + R * 32 - 1) / (R * 32) * 32, chunk_bf16 = (n + R - 1) / R;
      const int64_t expected_bytes = d == SyncDType::F32    ? 4 * n
                                     : d == SyncDType::BF16 ? 2 * (gathered ? n : chunk_bf16 * R)
                                                            : 39 * (gathered ? (n + 31) / 32 : chunk * R / 32);
      EXPECT_EQ(w.counters().bytes - bytes, expected_bytes) << lowsync::sync_dtype_name(d) << " n=" << n;
      double worst = 0;
      for (int64_t i = 0; i < n; ++i) {
        double bound = 1e-6 * magnitude[i] + 1e-30;  // fp32 summation order
        if (d == SyncDType::BF16) bound += std::ldexp(magnitude[i] + std::fabs(exact[i]), -8) * 1.01;
        if (d == SyncDType::Q8) {
          bound += 1.01 * q8_error[i];
          if (!gathered) bound += std::ldexp(std::fabs(exact[i]) + q8_error[i] + bound, -8) * 1.01;
        }
        const double err = std::fabs(x[i] - exact[i]);
        worst = std::max(worst, err / bound);
        ASSERT_LE(err, bound) << lowsync::sync_dtype_name(d) << " n=" << n << " i=" << i << " got " << x[i]
                              << " exact " << exact[i] << (gathered ? " (gather)" : " (reduce-scatter)");
      }
      if (d != SyncDType::F32) EXPECT_GT(worst, 0.0) << "compression changed nothing: not used?";
      // Identical on every rank: rank 0's copy broadcast and compared bit for bit.
      std::vector<float> root = x;
      w.broadcast(root.data(), n * 4, 0);
      EXPECT_EQ(std::memcmp(root.data(), x.data(), n * 4), 0) << lowsync::sync_dtype_name(d) << " n=" << n;
    }
  }
}

// Both ways of a compressed sync run where the test above needs them: gather for small messages,
// the reduce-scatter way for large ones at 4 ranks (at 2 ranks gathering never sends more).
TEST(Communicator, CompressedAllReduceTakesBothWays) {
  using lowsync::CompressedAllReduce;
  using lowsync::SyncDType;
  const int R = world().size();
  EXPECT_EQ(lowsync::compressed_allreduce_algorithm(R, 576, SyncDType::Q8), CompressedAllReduce::Gather);
  if (R == 4) EXPECT_EQ(lowsync::compressed_allreduce_algorithm(R, 40000, SyncDType::Q8), CompressedAllReduce::ReduceScatter);
}

TEST(Communicator, AllReduceMaxTakesTheLargest) {
  Communicator w = world();
  int64_t v[2] = {w.rank(), -w.rank()};
  w.all_reduce_max(v, 2);
  EXPECT_EQ(v[0], w.size() - 1);
  EXPECT_EQ(v[1], 0);
}

TEST(Communicator, AllGatherOrdersBlocksByRank) {
  Communicator w = world();
  const float mine[2] = {float(w.rank()), 10.f * w.rank()};
  std::vector<float> all(2 * w.size(), -1.f);
  w.all_gather(mine, 2, all.data());
  for (int r = 0; r < w.size(); ++r) {
    EXPECT_EQ(all[2 * r], float(r));
    EXPECT_EQ(all[2 * r + 1], 10.f * r);
  }
}

TEST(Communicator, AllGatherOfDoublesOrdersBlocksByRank) {
  Communicator w = world();
  const double mine[2] = {w.rank() + 0.25, -1.0 * w.rank()};
  std::vector<double> all(2 * w.size(), 99.0);
  w.all_gather(mine, 2, all.data());
  for (int r = 0; r < w.size(); ++r) {
    EXPECT_DOUBLE_EQ(all[2 * r], r + 0.25);
    EXPECT_DOUBLE_EQ(all[2 * r + 1], -1.0 * r);
  }
}

// Rank 0 probes for what every other rank isends it: each message's source, tag and size arrive.
TEST(Communicator, ProbeSeesEachIsendWithItsSourceTagAndSize) {
  Communicator w = world();
  const int tag = 7;
  if (w.rank() != 0) {
    std::vector<char> payload(10 * w.rank(), char('a' + w.rank()));
    MPI_Request req = w.isend(payload.data(), static_cast<int64_t>(payload.size()), 0, tag);
    w.wait(req);
  } else {
    std::vector<bool> seen(w.size(), false);
    for (int n = 1; n < w.size(); ++n) {
      const Communicator::Incoming m = w.probe(true);
      ASSERT_GT(m.source, 0);
      EXPECT_EQ(m.tag, tag);
      EXPECT_EQ(m.bytes, 10 * m.source);
      std::vector<char> got(m.bytes);
      w.recv(got.data(), m.bytes, m.source, tag);
      EXPECT_EQ(got.front(), char('a' + m.source));
      seen[m.source] = true;
    }
    EXPECT_EQ(w.probe(false).source, -1);  // nothing more is waiting
  }
  w.barrier();
}

TEST(Communicator, ReduceScatterGivesEachRankItsSummedBlock) {
  Communicator w = world();
  const int R = w.size(), n = 3;
  std::vector<float> send(n * R);
  for (int i = 0; i < n * R; ++i) send[i] = float(i) * (w.rank() + 1);  // block b: rows b*n .. b*n+2
  std::vector<float> got(n);
  w.reduce_scatter(send.data(), got.data(), n);
  const float rank_sum = R * (R + 1) / 2.f;
  for (int i = 0; i < n; ++i) EXPECT_FLOAT_EQ(got[i], float(w.rank() * n + i) * rank_sum);
}

TEST(Communicator, BroadcastCopiesTheRootsBytes) {
  Communicator w = world();
  const int root = w.size() - 1;
  std::vector<int32_t> v(5, w.rank() == root ? 42 : 0);
  w.broadcast(v.data(), sizeof(int32_t) * v.size(), root);
  for (int32_t x : v) EXPECT_EQ(x, 42);
}

TEST(Communicator, SendAndRecvAroundARing) {
  Communicator w = world();
  const int R = w.size(), next = (w.rank() + 1) % R, prev = (w.rank() + R - 1) % R;
  const int64_t mine = 1000 + w.rank();
  int64_t got = -1;
  if (w.rank() % 2 == 0) {  // even ranks send first so that blocking calls cannot deadlock
    w.send(&mine, sizeof mine, next, 7);
    w.recv(&got, sizeof got, prev, 7);
  } else {
    w.recv(&got, sizeof got, prev, 7);
    w.send(&mine, sizeof mine, next, 7);
  }
  EXPECT_EQ(got, 1000 + prev);
}

TEST(Communicator, NonBlockingAllReduceEqualsBlocking) {
  Communicator w = world();
  std::vector<float> a(1000), b(1000);
  std::iota(a.begin(), a.end(), float(w.rank()));
  b = a;
  MPI_Request req = w.iall_reduce(a.data(), 1000);
  w.all_reduce(b.data(), 1000);  // other work while the first is in flight
  w.wait(req);
  EXPECT_EQ(a, b);
}

// parallel.sync_wait: sleep: the same sums (every rank's partial, summed in double here; all ranks
// bit-identical) and gathers as the spinning calls, at message sizes from one value to a large
// sync, and counted alike.
TEST(Communicator, SleepingWaitGivesTheSameSumsAndGathers) {
  Communicator w = world();
  const int R = w.size();
  for (int64_t n : {int64_t(1), int64_t(1024), int64_t(100003)}) {
    std::vector<double> exact(static_cast<size_t>(n), 0.0);
    for (int r = 0; r < R; ++r) {
      const std::vector<float> p = partial_of(r, n);
      for (int64_t i = 0; i < n; ++i) exact[i] += p[i];
    }
    std::vector<float> spun = partial_of(w.rank(), n), slept = spun;
    w.set_sync_wait(lowsync::SyncWait::Spin);
    w.all_reduce(spun.data(), n);
    w.set_sync_wait(lowsync::SyncWait::Sleep);
    const int64_t calls = w.counters().calls;
    w.all_reduce(slept.data(), n);
    EXPECT_EQ(w.counters().calls, calls + 1);
    for (int64_t i = 0; i < n; ++i) {
      // R - 1 float additions of values up to 1e2: each within an ulp of the running sum.
      ASSERT_NEAR(slept[i], exact[i], 1e-5 * R * (std::fabs(exact[i]) + 1e2)) << "n " << n << " i " << i;
      ASSERT_NEAR(spun[i], exact[i], 1e-5 * R * (std::fabs(exact[i]) + 1e2)) << "n " << n << " i " << i;
    }
    std::vector<float> every(static_cast<size_t>(n) * R);
    w.all_gather(slept.data(), n, every.data());
    for (int r = 0; r < R; ++r)
      ASSERT_EQ(std::memcmp(every.data() + r * n, slept.data(), n * sizeof(float)), 0) << "rank " << r << "'s sum differs";
  }
  // The gathers: floats, doubles and uneven counts, in rank order.
  const double d[2] = {w.rank() + 0.5, -2.0 * w.rank()};
  std::vector<double> all_d(2 * R);
  w.all_gather(d, 2, all_d.data());
  std::vector<int64_t> counts(R);
  for (int r = 0; r < R; ++r) counts[r] = r + 1;
  std::vector<float> mine(w.rank() + 1, float(w.rank())), all_f(R * (R + 1) / 2);
  w.all_gather(mine.data(), counts, all_f.data());
  for (int r = 0, at = 0; r < R; at += r + 1, ++r) {
    EXPECT_DOUBLE_EQ(all_d[2 * r], r + 0.5);
    EXPECT_DOUBLE_EQ(all_d[2 * r + 1], -2.0 * r);
    for (int i = 0; i <= r; ++i) EXPECT_EQ(all_f[at + i], float(r)) << "rank " << r;
  }
  w.set_sync_wait(lowsync::SyncWait::Spin);
}

// What sleeping is for: a rank that waits 200 ms for a late peer spends a small part of that on
// its core (its thread's CPU time), where a spinning wait would spend all of it.
TEST(Communicator, SleepingWaitGivesTheCoreAway) {
  Communicator w = world();
  w.set_sync_wait(lowsync::SyncWait::Sleep);
  float x = 1.f;
  w.barrier();
  const auto cpu_seconds = [] {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
  };
  if (w.rank() == 0) {
    const timespec late{0, 200000000};
    nanosleep(&late, nullptr);
  }
  const double wall0 = MPI_Wtime(), cpu0 = cpu_seconds();
  w.all_reduce(&x, 1);
  const double wall = MPI_Wtime() - wall0, cpu = cpu_seconds() - cpu0;
  EXPECT_EQ(x, float(w.size()));
  if (w.rank() != 0) {
    EXPECT_GT(wall, 0.1);  // it did wait for rank 0
    EXPECT_LT(cpu, 0.3 * wall) << "a sleeping wait of " << wall << " s took " << cpu << " s of CPU";
  }
  w.set_sync_wait(lowsync::SyncWait::Spin);
}

TEST(Communicator, CountersCountCallsAndBytes) {
  Communicator w = world();
  std::vector<float> x(256, 1.f);
  const lowsync::CommCounters before = w.counters();
  w.all_reduce(x.data(), 256);
  w.all_reduce(x.data(), 256);
  EXPECT_EQ(w.counters().calls - before.calls, 2);
  EXPECT_EQ(w.counters().bytes - before.bytes, 2 * 256 * 4);
  EXPECT_GE(w.counters().seconds, before.seconds);
}

TEST(Communicator, AgreeGivesEveryRankTheLowestFailingRanksError) {
  Communicator w = world();
  EXPECT_NO_THROW(w.agree([] {}));
  const int first_bad = w.size() / 2;  // ranks first_bad.. throw, each with its own message
  try {
    w.agree([&] {
      if (w.rank() >= first_bad) throw std::runtime_error("bad input on rank " + std::to_string(w.rank()));
    });
    FAIL() << "agree did not throw";
  } catch (const AgreedError& e) {
    EXPECT_EQ(std::string(e.what()), "bad input on rank " + std::to_string(first_bad));
  }
}

TEST(Communicator, SplitFormsGroupsOrderedByKey) {
  Communicator w = world();
  Communicator g = w.split(w.rank() % 2, -w.rank(), "parity");  // key reversed: highest rank first
  const int members = (w.size() + 1 - w.rank() % 2) / 2;
  EXPECT_EQ(g.size(), members);
  EXPECT_EQ(g.name(), "parity");
  float one = 1.f;
  g.all_reduce(&one, 1);
  EXPECT_EQ(one, float(members));
  int64_t top = w.rank();
  g.all_reduce_max(&top, 1);
  EXPECT_EQ(g.rank() == 0, w.rank() == top);
}

TEST(Communicator, MpiErrorNamesTheCallGroupAndRank) {
  Communicator w = world();
  const int32_t x = 0;
  try {
    w.send(&x, sizeof x, w.size() + 5, 0);  // no such rank
    FAIL() << "send to a missing rank did not throw";
  } catch (const MpiError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MPI Send failed in group 'world' on rank " + std::to_string(w.rank())), std::string::npos)
        << what;
  }
}

// Ranks other than 0 print only their failures, so that the log reads as one run.
struct FailurePrinter : ::testing::EmptyTestEventListener {
  int rank;
  explicit FailurePrinter(int r) : rank(r) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) std::fprintf(stderr, "rank %d: %s:%d: %s\n", rank, r.file_name(), r.line_number(), r.summary());
  }
};

}  // namespace

int main(int argc, char** argv) {
  lowsync::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(mpi.rank()));
  }
  return RUN_ALL_TESTS();
}
