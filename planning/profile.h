#pragma once
// What `lowsync profile` measured about the ranks and links of one mpirun world (profile.yaml):
// the inputs of the cost model. Compute is measured with the job's own backend on the model's own
// product shapes, so that a prediction inherits the engine's kernels (sgemm for prefill, the
// one-read kernel for small decode batches); links are fitted as latency + bytes / bandwidth.
#include <cstdint>
#include <string>
#include <vector>

namespace lowsync {

// t(bytes) = latency_s + bytes / bytes_per_s, least-squares over the measured message sizes.
struct LinkModel {
  double latency_s = 0;
  double bytes_per_s = 0;
  double seconds(double bytes) const { return latency_s + (bytes_per_s > 0 ? bytes / bytes_per_s : 0); }
};

// One measured message size of a link: the time of one operation (an all-reduce of `bytes`, or a
// one-way message), kept in the profile so that the fit's quality can be checked afterwards.
struct LinkSample {
  int64_t bytes = 0;
  double seconds = 0;
};

// Matrix-product speed in GFLOP/s (2 M K N / seconds) at the three row counts a job uses:
// a prefill pass (M = prefill_rows), a decode step of one sequence (M = 1) and of a full batch
// (M = decode_rows).
struct MatmulRates {
  double prefill = 0, decode_one = 0, decode_batch = 0;
};

struct RankProfile {
  int rank = 0;
  std::string host;
  int threads = 1;
  MatmulRates layers;  // FLOP-weighted over one layer's products (Q, K, V, O, FFN up/gate/down), full width
  MatmulRates head;    // the LM head [vocab, hidden] (zero for encoders)
  double read_bytes_per_s = 0;      // single-stream memory read bandwidth
  int64_t usable_memory_bytes = 0;  // MemAvailable (and any cgroup limit) / ranks sharing the host
};

// One group of ranks that all-reduce together (consecutive world ranks, as the dp x tp grid forms
// them); groups of the same size were measured at the same time, as a dp x tp job loads the links.
struct AllReduceLink {
  std::vector<int> ranks;
  LinkModel link;
  std::vector<LinkSample> samples;  // what `link` was fitted to
};

struct PointToPointLink {
  int from = 0, to = 0;
  LinkModel link;
  std::vector<LinkSample> samples;  // one-way seconds (half the round trip)
};

struct Profile {
  std::string date;             // ISO 8601, UTC
  std::string lowsync_version;
  std::string model;            // the model directory whose shapes were timed
  int world = 1;
  int prefill_rows = 0, decode_rows = 0;  // the M of MatmulRates
  std::vector<RankProfile> ranks;          // by world rank
  std::vector<AllReduceLink> all_reduce;   // every group size 2..world that divides world
  std::vector<PointToPointLink> point_to_point;  // neighbouring ranks (r, r + 1), both directions averaged
  double measure_seconds = 0;             // how long measuring took (wall, rank 0)

  // The link of the measured group with exactly these ranks; null when it was not measured.
  const LinkModel* all_reduce_of(const std::vector<int>& ranks) const;

  void save(const std::string& path) const;
  static Profile load(const std::string& path);  // UserError naming the file and key
};

}  // namespace lowsync
