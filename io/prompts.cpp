#include "io/prompts.h"

#include <hdf5.h>

#include <algorithm>

#include "io/error.h"

namespace lowsync {

namespace {

// HDF5 prints its own error stack by default; lowsync reports one line of its own instead.
struct QuietHdf5 {
  QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

int64_t dataset_length(hid_t file, const std::string& path, const std::string& name) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0)
    throw UserError(path + ": missing dataset '" + name + "'");
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  hid_t space = H5Dget_space(ds);
  int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[2] = {0, 0};
  H5Sget_simple_extent_dims(space, dims, nullptr);
  H5Sclose(space);
  H5Dclose(ds);
  if (rank != 1) throw UserError(path + ": dataset '" + name + "' must be one-dimensional");
  return static_cast<int64_t>(dims[0]);
}

template <class T>
std::vector<T> read_range(hid_t file, const std::string& name, int64_t begin, int64_t end) {
  std::vector<T> out(end - begin);
  if (out.empty()) return out;
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  hid_t space = H5Dget_space(ds);
  hsize_t start = begin, count = end - begin;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  hid_t mem = H5Screate_simple(1, &count, nullptr);
  hid_t type = std::is_same_v<T, int64_t> ? H5T_NATIVE_INT64 : H5T_NATIVE_INT32;
  herr_t err = H5Dread(ds, type, mem, space, H5P_DEFAULT, out.data());
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  if (err < 0) throw UserError("cannot read dataset '" + name + "'");
  return out;
}

void check_offsets(const std::vector<int64_t>& off, int64_t n_tokens, const std::string& path,
                   const std::string& name, const std::string& tokens_name) {
  if (off.empty()) throw UserError(path + ": dataset '" + name + "' is empty; expected N+1 offsets");
  if (off[0] != 0) throw UserError(path + ": " + name + "[0] is " + std::to_string(off[0]) + "; expected 0");
  for (size_t i = 0; i + 1 < off.size(); ++i)
    if (off[i + 1] < off[i])
      throw UserError(path + ": row " + std::to_string(i) + ": " + name + " decrease (" + std::to_string(off[i]) +
                      " then " + std::to_string(off[i + 1]) + "); offsets must be non-decreasing");
  if (off.back() != n_tokens)
    throw UserError(path + ": " + name + " end at " + std::to_string(off.back()) + " but '" + tokens_name +
                    "' holds " + std::to_string(n_tokens) + " tokens");
}

void check_ids(hid_t file, const std::string& path, const std::string& name, const std::vector<int64_t>& off,
               int vocab) {
  const int64_t chunk = 1 << 20;
  for (int64_t begin = 0; begin < off.back(); begin += chunk) {
    const int64_t end = std::min(off.back(), begin + chunk);
    auto ids = read_range<int32_t>(file, name, begin, end);
    for (int64_t i = 0; i < end - begin; ++i) {
      if (ids[i] >= 0 && ids[i] < vocab) continue;
      const int64_t pos = begin + i;
      const int64_t row = std::upper_bound(off.begin(), off.end(), pos) - off.begin() - 1;
      throw UserError(path + ": row " + std::to_string(row) + ": " + name + " holds token id " +
                      std::to_string(ids[i]) + "; expected 0 <= id < vocab size " + std::to_string(vocab));
    }
  }
}

}  // namespace

PromptReader::PromptReader(const std::string& path, int vocab, bool need_targets) : path_(path) {
  static QuietHdf5 quiet;
  if (H5Fis_hdf5(path.c_str()) <= 0) throw UserError(path + ": not found or not an HDF5 file (the job's input)");
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0) throw UserError(path + ": cannot open the input file");
  int64_t n_tokens = dataset_length(file_, path, "input_ids");
  int64_t n_offsets = dataset_length(file_, path, "offsets");
  offsets_ = read_range<int64_t>(file_, "offsets", 0, n_offsets);
  check_offsets(offsets_, n_tokens, path, "offsets", "input_ids");
  check_ids(file_, path, "input_ids", offsets_, vocab);
  if (need_targets) {
    int64_t n_targets = dataset_length(file_, path, "targets");
    int64_t n_toff = dataset_length(file_, path, "target_offsets");
    target_offsets_ = read_range<int64_t>(file_, "target_offsets", 0, n_toff);
    check_offsets(target_offsets_, n_targets, path, "target_offsets", "targets");
    if (target_offsets_.size() != offsets_.size())
      throw UserError(path + ": 'target_offsets' has " + std::to_string(n_toff) + " entries but 'offsets' has " +
                      std::to_string(n_offsets) + "; expected one target row per prompt");
    check_ids(file_, path, "targets", target_offsets_, vocab);
  }
}

PromptReader::~PromptReader() {
  if (file_ >= 0) H5Fclose(file_);
}

std::vector<int32_t> PromptReader::tokens(int64_t row) const {
  return read_range<int32_t>(file_, "input_ids", offsets_[row], offsets_[row + 1]);
}

std::vector<int32_t> PromptReader::targets(int64_t row) const {
  return read_range<int32_t>(file_, "targets", target_offsets_[row], target_offsets_[row + 1]);
}

}  // namespace lowsync
