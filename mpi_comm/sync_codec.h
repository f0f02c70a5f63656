#pragma once
// How the payload of a model sync (tensor parallelism, SPD, block parallelism) travels:
// `parallel.sync_dtype`. fp32 sends the partial sums as they are (MPI_Allreduce, exact as the
// reference). bf16 and q8 compress them for slow links: each value is rounded to bfloat16
// (2 bytes), or quantised in blocks of 32 with one fp32 scale per block, int8 values (36 bytes per
// 32 values, GGUF's Q8_0 with an fp32 scale). Sums are always taken in fp32 (Communicator::
// all_reduce(float*, n, SyncDType): each rank's partial is encoded once, summed in fp32 by the rank
// that owns the chunk, and the sum encoded once more for the all-gather; every rank decodes the
// same bytes, so all ranks hold identical results).
#include <cstdint>
#include <string>

namespace lowsync {

enum class SyncDType { F32, BF16, Q8 };

// Inline: the job YAML (io/) reads the name without linking the MPI library.
inline const char* sync_dtype_name(SyncDType d) {
  return d == SyncDType::BF16 ? "bf16" : d == SyncDType::Q8 ? "q8" : "fp32";
}
inline bool parse_sync_dtype(const std::string& name, SyncDType& out) {  // false for an unknown name
  for (SyncDType d : {SyncDType::F32, SyncDType::BF16, SyncDType::Q8})
    if (name == sync_dtype_name(d)) {
      out = d;
      return true;
    }
  return false;
}

constexpr int kQ8Block = 32;                           // values per q8 block
constexpr int kQ8BlockBytes = 4 + kQ8Block;            // fp32 scale + int8 values
// Values per chunk must be a multiple of this for the dtype (a q8 block is never split).
inline int64_t sync_grain(SyncDType d) { return d == SyncDType::Q8 ? kQ8Block : 1; }
// Bytes on the wire for n values (n a multiple of sync_grain).
int64_t encoded_bytes(SyncDType d, int64_t n);
// Bytes per value on the wire, for the cost model: 4, 2 or 36/32.
double sync_bytes_per_value(SyncDType d);

// x[0, n) -> out[0, encoded_bytes(d, n)).
void encode(SyncDType d, const float* x, int64_t n, uint8_t* out);
// acc[i] += decoded value i (n values).
void decode_add(SyncDType d, const uint8_t* in, int64_t n, float* acc);
// out[i] = decoded value i.
void decode(SyncDType d, const uint8_t* in, int64_t n, float* out);

}  // namespace lowsync
