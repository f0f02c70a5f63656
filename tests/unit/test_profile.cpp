// profile.yaml: save/load round trip, refusal of a missing or wrong-typed key (one UserError naming
// the file and the key), and the latency/bandwidth fit's guarantees.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/error.h"
#include "planning/profile.h"
#include "planning/profiler.h"

using namespace lowsync;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("lowsync_profile_" + std::to_string(::getpid()) + "_" + name)).string();
}

Profile example() {
  Profile p;
  p.date = "2025-01-02T03:04:05Z";
  p.lowsync_version = "0.1.0";
  p.model = "/models/tiny llama";
  p.world = 2;
  p.prefill_rows = 512;
  p.decode_rows = 32;
  p.measure_seconds = 12.25;
  for (int r = 0; r < 2; ++r) {
    RankProfile rp;
    rp.rank = r;
    rp.host = "node" + std::to_string(r);
    rp.threads = 1 + r;
    rp.layers = {101.5 + r, 43.1, 58.0 / 3.0};
    rp.head = {111.8, 0.1 + 0.2, 54.0};
    rp.read_bytes_per_s = 2.4895463819677307e10;
    rp.usable_memory_bytes = int64_t(12310632448) + r;
    p.ranks.push_back(rp);
  }
  AllReduceLink a;
  a.ranks = {0, 1};
  a.link = {5.9e-7, 3.566e9};
  a.samples = {{4, 5e-7}, {1048576, 2.17e-4}};  // 5e-07 is saved as 5.0e-07: a number to every YAML reader
  p.all_reduce.push_back(a);
  PointToPointLink l;
  l.from = 0;
  l.to = 1;
  l.link = {5.6e-7, 5.93e9};
  l.samples = {{4, 4.5e-7}, {1048576, 1.4e-4}};
  p.point_to_point.push_back(l);
  return p;
}

std::string read(const std::string& path) {
  std::stringstream s;
  s << std::ifstream(path).rdbuf();
  return s.str();
}

// The message of loading `text` as a profile; empty if it loads.
std::string load_error(const std::string& text) {
  const std::string path = temp_path("bad.yaml");
  std::ofstream(path) << text;
  try {
    Profile::load(path);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

}  // namespace

TEST(Profile, SaveLoadRoundTrip) {
  const Profile p = example();
  const std::string path = temp_path("roundtrip.yaml");
  p.save(path);
  const Profile q = Profile::load(path);
  EXPECT_EQ(q.date, p.date);
  EXPECT_EQ(q.lowsync_version, p.lowsync_version);
  EXPECT_EQ(q.model, p.model);
  EXPECT_EQ(q.world, 2);
  EXPECT_EQ(q.prefill_rows, 512);
  EXPECT_EQ(q.decode_rows, 32);
  EXPECT_EQ(q.measure_seconds, p.measure_seconds);
  ASSERT_EQ(q.ranks.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    const auto &a = p.ranks[r], &b = q.ranks[r];
    EXPECT_EQ(b.rank, a.rank);
    EXPECT_EQ(b.host, a.host);
    EXPECT_EQ(b.threads, a.threads);
    EXPECT_EQ(b.layers.prefill, a.layers.prefill);  // exact: doubles are saved with all their digits
    EXPECT_EQ(b.layers.decode_one, a.layers.decode_one);
    EXPECT_EQ(b.layers.decode_batch, a.layers.decode_batch);
    EXPECT_EQ(b.head.prefill, a.head.prefill);
    EXPECT_EQ(b.head.decode_one, a.head.decode_one);
    EXPECT_EQ(b.head.decode_batch, a.head.decode_batch);
    EXPECT_EQ(b.read_bytes_per_s, a.read_bytes_per_s);
    EXPECT_EQ(b.usable_memory_bytes, a.usable_memory_bytes);
  }
  ASSERT_EQ(q.all_reduce.size(), 1u);
  EXPECT_EQ(q.all_reduce[0].ranks, (std::vector<int>{0, 1}));
  EXPECT_EQ(q.all_reduce[0].link.latency_s, 5.9e-7);
  EXPECT_EQ(q.all_reduce[0].link.bytes_per_s, 3.566e9);
  ASSERT_EQ(q.all_reduce[0].samples.size(), 2u);
  EXPECT_EQ(q.all_reduce[0].samples[1].bytes, 1048576);
  EXPECT_EQ(q.all_reduce[0].samples[1].seconds, 2.17e-4);
  ASSERT_EQ(q.point_to_point.size(), 1u);
  EXPECT_EQ(q.point_to_point[0].from, 0);
  EXPECT_EQ(q.point_to_point[0].to, 1);
  EXPECT_EQ(q.point_to_point[0].link.bytes_per_s, 5.93e9);
  EXPECT_EQ(q.point_to_point[0].samples[0].seconds, 4.5e-7);

  ASSERT_NE(q.all_reduce_of({0, 1}), nullptr);
  EXPECT_EQ(q.all_reduce_of({0, 1})->latency_s, 5.9e-7);
  EXPECT_EQ(q.all_reduce_of({1, 0}), nullptr);
  EXPECT_EQ(q.all_reduce_of({0}), nullptr);

  q.save(temp_path("roundtrip2.yaml"));  // a second round trip writes the same text
  EXPECT_EQ(read(temp_path("roundtrip2.yaml")), read(path));
  EXPECT_NE(read(path).find("[4, 5.0e-07]"), std::string::npos) << read(path);
}

TEST(Profile, RefusesMissingKeyNamingFileAndKey) {
  const std::string path = temp_path("good.yaml");
  example().save(path);
  const std::string text = read(path);
  ASSERT_EQ(load_error(text), "");

  std::string msg = load_error(replace(text, "prefill_rows: 512\n", ""));
  EXPECT_NE(msg.find(temp_path("bad.yaml")), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing key 'prefill_rows'"), std::string::npos) << msg;

  // A nested key is named by its full path.
  msg = load_error(replace(text, "decode_one: 43.1", "decode_on: 43.1"));
  EXPECT_NE(msg.find("missing key 'ranks[0].layers.decode_one'"), std::string::npos) << msg;
  msg = load_error(replace(text, "bytes_per_s: 5.93e+09", "bandwidth: 5.93e+09"));
  EXPECT_NE(msg.find("missing key 'point_to_point[0].bytes_per_s'"), std::string::npos) << msg;
  EXPECT_NE(load_error("{}\n").find("missing key 'date'"), std::string::npos);
}

TEST(Profile, RefusesWrongTypedKey) {
  const std::string path = temp_path("good.yaml");
  example().save(path);
  const std::string text = read(path);
  std::string msg = load_error(replace(text, "world: 2", "world: two"));
  EXPECT_NE(msg.find("key 'world' must be an integer"), std::string::npos) << msg;
  msg = load_error(replace(text, "read_bytes_per_s: 24895463819.677307", "read_bytes_per_s: [1, 2]"));
  EXPECT_NE(msg.find("key 'ranks[0].read_bytes_per_s' must be a number"), std::string::npos) << msg;
  msg = load_error(replace(text, "[4, 5.0e-07]", "[4]"));
  EXPECT_NE(msg.find("key 'all_reduce[0].samples[0]' must be a pair"), std::string::npos) << msg;
  msg = load_error(replace(text, "world: 2", "world: 3"));
  EXPECT_NE(msg.find("'world' is 3"), std::string::npos) << msg;
  EXPECT_NE(load_error("[1, 2]\n").find("not a lowsync profile"), std::string::npos);
  msg = load_error("date: [unclosed\n");
  EXPECT_NE(msg.find("cannot read the profile"), std::string::npos) << msg;
}

TEST(FitLink, RecoversAnExactLine) {
  std::vector<LinkSample> s;
  for (int64_t b = 4; b <= (1 << 20); b *= 4) s.push_back({b, 2e-6 + double(b) / 5e9});
  const LinkModel m = fit_link(s);
  EXPECT_NEAR(m.latency_s, 2e-6, 1e-12);
  EXPECT_NEAR(m.bytes_per_s, 5e9, 1e3);
  EXPECT_NEAR(m.seconds(1 << 20), 2e-6 + double(1 << 20) / 5e9, 1e-12);
}

TEST(FitLink, LatencyNeverNegativeBandwidthAlwaysPositive) {
  // Times that would give a negative intercept: the line is refitted through the origin.
  const LinkModel a = fit_link({{1000, 1e-7}, {2000, 5e-7}, {4000, 1.3e-6}});
  EXPECT_EQ(a.latency_s, 0);
  EXPECT_GT(a.bytes_per_s, 0);
  // Times that do not grow with size: latency is their level, bandwidth the best rate seen.
  const LinkModel b = fit_link({{4, 3e-6}, {1024, 2.5e-6}, {65536, 2e-6}});
  EXPECT_GE(b.latency_s, 0);
  EXPECT_NEAR(b.bytes_per_s, 65536 / 2e-6, 1);
  // Nothing measurable: zeros, not NaN.
  const LinkModel c = fit_link({{4, 0}});
  EXPECT_EQ(c.latency_s, 0);
  EXPECT_EQ(c.bytes_per_s, 0);
}
