#pragma once
// `debug.dump`: every rank's tapped tensors (layers/tensor_taps.h) gathered to world rank 0 and
// written as one HDF5 file, one float32 dataset [rows, cols] per tensor name, plus the pass's
// batch (/batch/tokens, /batch/positions, /batch/row_offsets) so that rows can be matched to prompts.
#include <string>

#include "layers/tensor_taps.h"
#include "mpi_comm/communicator.h"

namespace lowsync {

// Collective over `world`. `taps`: this rank's (null on ranks that tap nothing, e.g. replicas
// other than the first). Rank 0 writes `path` through a temporary file renamed at the end, so a
// dump file that exists is complete; returns the number of tensors written (rank 0), or throws
// UserError naming the file when it cannot be written.
int write_tensor_dump(Communicator& world, const TensorTaps* taps, const std::string& path);

}  // namespace lowsync
