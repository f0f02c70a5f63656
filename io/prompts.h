#pragma once
// The prompts HDF5 (README "Prompts"): ragged int32 token rows in CSR form, optional targets and
// stop sequences.
#include <cstdint>
#include <string>
#include <vector>

namespace lowsync {

// The rows' ids (/ids, README "Prompts"), carried to the output unchanged: integers (kept in the
// input's integer dtype) or text (written as UTF-8 variable-length strings).
struct RowIds {
  enum class Kind { none, integer, text };
  Kind kind = Kind::none;
  long long file_type = -1;        // hid_t: the input's integer dtype (kind integer), owned by PromptReader
  std::vector<int64_t> integers;   // kind integer: one per row
  std::vector<std::string> texts;  // kind text: one per row
};

class PromptReader {
 public:
  // Opens the file and checks the whole of it against the contract (offsets start at 0, never
  // decrease, end at the token count; every id in [0, vocab)), so that a bad row fails before any
  // compute is spent. need_targets: /targets and /target_offsets must be present.
  // samples: rows per prompt (generate.n): row r of the job is prompt r / samples, its sample
  // r % samples; every method below counts job rows.
  PromptReader(const std::string& path, int vocab, bool need_targets, int samples = 1);
  ~PromptReader();

  int64_t prompts() const { return static_cast<int64_t>(offsets_.size()) - 1; }  // the file's rows
  int64_t rows() const { return prompts() * samples_; }
  int samples() const { return samples_; }
  int64_t prompt_of(int64_t row) const { return row / samples_; }
  int sample_of(int64_t row) const { return static_cast<int>(row % samples_); }
  int64_t length(int64_t row) const { return offsets_[prompt_of(row) + 1] - offsets_[prompt_of(row)]; }
  int64_t target_length(int64_t row) const {
    return target_offsets_[prompt_of(row) + 1] - target_offsets_[prompt_of(row)];
  }
  bool has_targets() const { return !target_offsets_.empty(); }
  std::vector<int32_t> tokens(int64_t row) const;
  std::vector<int32_t> targets(int64_t row) const;
  const std::string& path() const { return path_; }
  // Token sequences that stop a generated row (/stop_ids, /stop_offsets; none when absent).
  const std::vector<std::vector<int32_t>>& stop_sequences() const { return stop_sequences_; }
  // The ids of rows [first, first + count) (a prompt's id for each of its samples); kind none when
  // the file has no /ids.
  RowIds ids(int64_t first, int64_t count) const;

 private:
  RowIds prompt_ids(int64_t first, int64_t count) const;  // of the file's rows
  std::string path_;
  int samples_ = 1;
  long long file_ = -1;  // hid_t
  std::vector<int64_t> offsets_, target_offsets_;
  std::vector<std::vector<int32_t>> stop_sequences_;
  RowIds::Kind ids_kind_ = RowIds::Kind::none;
  long long ids_type_ = -1;  // hid_t of /ids' dtype (kind integer)
};

}  // namespace lowsync
