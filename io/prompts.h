#pragma once
// The prompts HDF5 (README "Prompts"): ragged int32 token rows in CSR form, optional targets and
// stop sequences.
#include <cstdint>
#include <string>
#include <vector>

namespace lowsync {

class PromptReader {
 public:
  // Opens the file and checks the whole of it against the contract (offsets start at 0, never
  // decrease, end at the token count; every id in [0, vocab)), so that a bad row fails before any
  // compute is spent. need_targets: /targets and /target_offsets must be present.
  PromptReader(const std::string& path, int vocab, bool need_targets);
  ~PromptReader();

  int64_t rows() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t length(int64_t row) const { return offsets_[row + 1] - offsets_[row]; }
  int64_t target_length(int64_t row) const { return target_offsets_[row + 1] - target_offsets_[row]; }
  bool has_targets() const { return !target_offsets_.empty(); }
  std::vector<int32_t> tokens(int64_t row) const;
  std::vector<int32_t> targets(int64_t row) const;
  const std::string& path() const { return path_; }
  // Token sequences that stop a generated row (/stop_ids, /stop_offsets; none when absent).
  const std::vector<std::vector<int32_t>>& stop_sequences() const { return stop_sequences_; }

 private:
  std::string path_;
  long long file_ = -1;  // hid_t
  std::vector<int64_t> offsets_, target_offsets_;
  std::vector<std::vector<int32_t>> stop_sequences_;
};

}  // namespace lowsync
