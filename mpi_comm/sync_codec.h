#pragma once
// How the payload of a model sync (tensor parallelism, SPD, block parallelism) is encoded on the
// wire: `parallel.sync_dtype`. fp32 sends the partial sums as they are (MPI_Allreduce, exact as the
// reference). bf16 and q8 compress them for slow links:
//  - bf16: each value rounded to bfloat16 (2 bytes; relative error <= 2^-8).
//  - q8: blocks of 32 values. A block's largest |x| travels apart, exact (fp32 value + its index),
//    because SmolLM2's partial sums have outlier channels (largest / median |x| up to ~6e4): one
//    such value would set the scale of its whole block and flatten the other 31 to zero
//    (bench/sync_codec_study.py: top-1 0.965 -> 0.994 against fp32 syncs). The other 31 are int8
//    of one bf16 scale s = max |rest| / 127, rounded up to a bf16 so that |q| <= 127 (bf16, not
//    fp16: no subnormal scales for small blocks, no overflow): 4 + 2 + 1 + 32 = 39 bytes per 32
//    values. Error: 0 for the outlier, <= s / 2 for the others, s <= max |rest| / 127 x (1 + 2^-7).
// How often a value is rounded in a sync: Communicator::all_reduce(float*, n, SyncDType) (and
// mpi_comm/wire_bytes.h's compressed_allreduce_algorithm) says; in short, each rank's partial is
// encoded exactly once, partials are summed in fp32 in rank order, and a large sync's sum is
// rounded once more, to bf16, for its all-gather.
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

constexpr int kQ8Block = 32;                   // values per q8 block
constexpr int kQ8BlockBytes = 4 + 2 + 1 + kQ8Block;  // fp32 outlier, bf16 scale, outlier index, int8 values
// Values per chunk must be a multiple of this for the dtype (a q8 block is never split).
inline int64_t sync_grain(SyncDType d) { return d == SyncDType::Q8 ? kQ8Block : 1; }
// n rounded up to a multiple of the grain (the zero-padded length a sync encodes).
inline int64_t sync_padded(SyncDType d, int64_t n) { return (n + sync_grain(d) - 1) / sync_grain(d) * sync_grain(d); }
// Bytes on the wire for n values (n a multiple of sync_grain).
int64_t encoded_bytes(SyncDType d, int64_t n);
// Bytes per value on the wire: 4, 2 or 39/32.
double sync_bytes_per_value(SyncDType d);

// x[0, n) -> out[0, encoded_bytes(d, n)).
void encode(SyncDType d, const float* x, int64_t n, uint8_t* out);
// acc[i] += decoded value i (n values).
void decode_add(SyncDType d, const uint8_t* in, int64_t n, float* acc);
// out[i] = decoded value i.
void decode(SyncDType d, const uint8_t* in, int64_t n, float* out);

}  // namespace lowsync
