#pragma once
// A batch's results as bytes and back: what a replica sends to world rank 0, and what a pipeline's
// last stage sends to its first. Per row: its token ids, log-probs, embedding, sum and timings.
#include <cstdint>
#include <vector>

#include "jobs/result_writer.h"

namespace lowsync {

std::vector<char> pack_results(int64_t index, const std::vector<RowResult>& rows);
std::vector<RowResult> unpack_results(const std::vector<char>& bytes, int64_t& index);

}  // namespace lowsync
