#include "planning/profile.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <fstream>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

const LinkModel* Profile::all_reduce_of(const std::vector<int>& group) const {
  for (const auto& a : all_reduce)
    if (a.ranks == group) return &a.link;
  return nullptr;
}

namespace {

// A double in the fewest digits that read back to the same value (std::to_chars' shortest form):
// a saved profile loads back exactly, and 2.17e-04 stays 2.17e-04, not 0.00021699999999999999.
std::string num(double x) {
  char buf[32];
  const auto end = std::to_chars(buf, buf + sizeof buf, x).ptr;
  std::string s(buf, end);
  // YAML 1.1 readers (PyYAML) take 5e-07 for a string: give the mantissa a decimal point.
  const size_t e = s.find('e');
  if (e != std::string::npos && s.find('.') == std::string::npos) s.insert(e, ".0");
  return s;
}

void emit_rates(YAML::Emitter& e, const char* key, const MatmulRates& r) {
  e << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginMap;
  e << YAML::Key << "prefill" << YAML::Value << num(r.prefill);
  e << YAML::Key << "decode_one" << YAML::Value << num(r.decode_one);
  e << YAML::Key << "decode_batch" << YAML::Value << num(r.decode_batch);
  e << YAML::EndMap;
}

void emit_link(YAML::Emitter& e, const LinkModel& link, const std::vector<LinkSample>& samples) {
  e << YAML::Key << "latency_s" << YAML::Value << num(link.latency_s);
  e << YAML::Key << "bytes_per_s" << YAML::Value << num(link.bytes_per_s);
  e << YAML::Key << "samples" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const auto& s : samples) e << YAML::Flow << YAML::BeginSeq << s.bytes << num(s.seconds) << YAML::EndSeq;
  e << YAML::EndSeq;
}

// Reads required keys; every failure is one UserError naming the file and the key's full path
// (e.g. `ranks[1].layers.prefill`), so a hand-edited or truncated profile says what is wrong.
class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  YAML::Node node(const YAML::Node& parent, const std::string& key, const std::string& where) const {
    const YAML::Node n = parent.IsMap() ? parent[key] : YAML::Node();
    if (!n) throw UserError(path_ + ": missing key '" + where + key + "'");
    return n;
  }
  YAML::Node seq(const YAML::Node& parent, const std::string& key, const std::string& where) const {
    const YAML::Node n = node(parent, key, where);
    if (!n.IsSequence()) wrong(where + key, "a list");
    return n;
  }
  template <class T>
  T get(const YAML::Node& parent, const std::string& key, const std::string& where, const char* type) const {
    return as<T>(node(parent, key, where), where + key, type);
  }
  template <class T>
  T as(const YAML::Node& n, const std::string& key, const char* type) const {
    if (n && n.IsScalar()) {
      try {
        return n.as<T>();
      } catch (const YAML::Exception&) {
      }
    }
    wrong(key, type);
  }
  [[noreturn]] void wrong(const std::string& key, const char* type) const {
    throw UserError(path_ + ": key '" + key + "' must be " + type);
  }

 private:
  std::string path_;
};

MatmulRates read_rates(const Reader& r, const YAML::Node& parent, const std::string& key, const std::string& where) {
  const YAML::Node n = r.node(parent, key, where);
  const std::string w = where + key + ".";
  return {r.get<double>(n, "prefill", w, "a number"), r.get<double>(n, "decode_one", w, "a number"),
          r.get<double>(n, "decode_batch", w, "a number")};
}

void read_link(const Reader& r, const YAML::Node& n, const std::string& where, LinkModel& link,
               std::vector<LinkSample>& samples) {
  link.latency_s = r.get<double>(n, "latency_s", where, "a number");
  link.bytes_per_s = r.get<double>(n, "bytes_per_s", where, "a number");
  const YAML::Node s = r.seq(n, "samples", where);
  for (size_t i = 0; i < s.size(); ++i) {
    const std::string key = where + "samples[" + std::to_string(i) + "]";
    if (!s[i].IsSequence() || s[i].size() != 2) r.wrong(key, "a pair [bytes, seconds]");
    samples.push_back({r.as<int64_t>(s[i][0], key + "[0]", "an integer (bytes)"),
                       r.as<double>(s[i][1], key + "[1]", "a number (seconds)")});
  }
}

}  // namespace

void Profile::save(const std::string& path) const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "date" << YAML::Value << YAML::DoubleQuoted << date;  // quoted: a string, not a YAML timestamp
  e << YAML::Key << "lowsync_version" << YAML::Value << YAML::DoubleQuoted << lowsync_version;
  e << YAML::Key << "model" << YAML::Value << model;
  e << YAML::Key << "world" << YAML::Value << world;
  e << YAML::Key << "prefill_rows" << YAML::Value << prefill_rows;
  e << YAML::Key << "decode_rows" << YAML::Value << decode_rows;
  e << YAML::Key << "measure_seconds" << YAML::Value << num(measure_seconds);
  e << YAML::Key << "ranks" << YAML::Value << YAML::BeginSeq;
  for (const auto& r : ranks) {
    e << YAML::BeginMap;
    e << YAML::Key << "rank" << YAML::Value << r.rank;
    e << YAML::Key << "host" << YAML::Value << r.host;
    e << YAML::Key << "threads" << YAML::Value << r.threads;
    emit_rates(e, "layers", r.layers);  // GFLOP/s
    emit_rates(e, "head", r.head);
    e << YAML::Key << "read_bytes_per_s" << YAML::Value << num(r.read_bytes_per_s);
    e << YAML::Key << "usable_memory_bytes" << YAML::Value << r.usable_memory_bytes;
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "all_reduce" << YAML::Value << YAML::BeginSeq;
  for (const auto& a : all_reduce) {
    e << YAML::BeginMap << YAML::Key << "ranks" << YAML::Value << YAML::Flow << a.ranks;
    emit_link(e, a.link, a.samples);
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "point_to_point" << YAML::Value << YAML::BeginSeq;
  for (const auto& p : point_to_point) {
    e << YAML::BeginMap << YAML::Key << "from" << YAML::Value << p.from << YAML::Key << "to" << YAML::Value << p.to;
    emit_link(e, p.link, p.samples);
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::EndMap;
  std::ofstream out(path);
  if (!out) throw UserError(path + ": cannot write the profile");
  out << e.c_str() << "\n";
  if (!out.flush()) throw UserError(path + ": cannot write the profile");
}

Profile Profile::load(const std::string& path) {
  YAML::Node n;
  try {
    n = YAML::Load(read_regular_file(path, "the profile"));
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": cannot read the profile (" + e.msg + ")");
  }
  if (!n.IsMap()) throw UserError(path + ": not a lowsync profile (expected a YAML map)");
  const Reader r(path);
  Profile p;
  p.date = r.get<std::string>(n, "date", "", "a string");
  p.lowsync_version = r.get<std::string>(n, "lowsync_version", "", "a string");
  p.model = r.get<std::string>(n, "model", "", "a string");
  p.world = r.get<int>(n, "world", "", "an integer");
  p.prefill_rows = r.get<int>(n, "prefill_rows", "", "an integer");
  p.decode_rows = r.get<int>(n, "decode_rows", "", "an integer");
  p.measure_seconds = r.get<double>(n, "measure_seconds", "", "a number");
  const YAML::Node ranks = r.seq(n, "ranks", "");
  for (size_t i = 0; i < ranks.size(); ++i) {
    const std::string w = "ranks[" + std::to_string(i) + "].";
    RankProfile rp;
    rp.rank = r.get<int>(ranks[i], "rank", w, "an integer");
    rp.host = r.get<std::string>(ranks[i], "host", w, "a string");
    rp.threads = r.get<int>(ranks[i], "threads", w, "an integer");
    rp.layers = read_rates(r, ranks[i], "layers", w);
    rp.head = read_rates(r, ranks[i], "head", w);
    rp.read_bytes_per_s = r.get<double>(ranks[i], "read_bytes_per_s", w, "a number");
    rp.usable_memory_bytes = r.get<int64_t>(ranks[i], "usable_memory_bytes", w, "an integer");
    p.ranks.push_back(rp);
  }
  const YAML::Node all_reduce = r.seq(n, "all_reduce", "");
  for (size_t i = 0; i < all_reduce.size(); ++i) {
    const std::string w = "all_reduce[" + std::to_string(i) + "].";
    AllReduceLink a;
    const YAML::Node group = r.seq(all_reduce[i], "ranks", w);
    for (size_t j = 0; j < group.size(); ++j)
      a.ranks.push_back(r.as<int>(group[j], w + "ranks[" + std::to_string(j) + "]", "an integer"));
    read_link(r, all_reduce[i], w, a.link, a.samples);
    p.all_reduce.push_back(a);
  }
  const YAML::Node p2p = r.seq(n, "point_to_point", "");
  for (size_t i = 0; i < p2p.size(); ++i) {
    const std::string w = "point_to_point[" + std::to_string(i) + "].";
    PointToPointLink l;
    l.from = r.get<int>(p2p[i], "from", w, "an integer");
    l.to = r.get<int>(p2p[i], "to", w, "an integer");
    read_link(r, p2p[i], w, l.link, l.samples);
    p.point_to_point.push_back(l);
  }
  if (static_cast<int>(p.ranks.size()) != p.world)
    throw UserError(path + ": key 'ranks' lists " + std::to_string(p.ranks.size()) + " ranks but 'world' is " +
                    std::to_string(p.world));
  return p;
}

}  // namespace lowsync
