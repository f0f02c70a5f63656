#pragma once
// The machine's own limits, measured next to the engine so that the benchmark reports how close
// the engine comes to them: the dense matrix product (GFLOP/s on the engine's GEMM shapes) and
// memory bandwidth (bytes/s of a streaming read). One implementation per device kind; the engine
// benchmark talks only to this interface (make_cpu_probes here; a GPU version can add its own).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace lowsync::bench {

// y = x w^T with x [M, K] and w [N, K] (row-major), the engine's Backend::matmul.
struct GemmShape {
  std::string name;  // e.g. "q_proj"
  int64_t M = 0, N = 0, K = 0;
  int64_t count = 1;  // how many such products one forward pass makes (layers x uses)
  double flops() const { return 2.0 * double(M) * double(N) * double(K); }
};

class MachineProbes {
 public:
  virtual ~MachineProbes() = default;
  // What the probes run on: device, library, configuration.
  virtual nlohmann::json info() const = 0;
  // Seconds of one product of `shape`: the fastest of `reps` after a warm-up. Fastest, not median:
  // on a shared machine the fastest repetition is the closest to what the hardware can do.
  virtual double gemm_seconds(const GemmShape& shape, int reps) = 0;
  // Bytes/s of reading a buffer much larger than the last-level cache once (fastest of `reps`).
  virtual double read_bandwidth(int reps) = 0;
  // Bytes/s of copying such a buffer (bytes read + bytes written; fastest of `reps`), for reference.
  virtual double copy_bandwidth(int reps) = 0;
};

// CPU probes: OpenBLAS cblas_sgemm on `threads` threads; a single-threaded streaming read and copy
// over buffers of `buffer_bytes` each.
std::unique_ptr<MachineProbes> make_cpu_probes(int threads, int64_t buffer_bytes);

// Median of a non-empty list.
double median(std::vector<double> v);

}  // namespace lowsync::bench
