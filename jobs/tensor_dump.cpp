#include "jobs/tensor_dump.h"

#include <hdf5.h>
#include <hdf5_hl.h>

#include <cstdio>
#include <cstring>
#include <map>

#include "io/error.h"

namespace lowsync {

namespace {

constexpr int kTagSize = 7301, kTagBytes = 7302;

// One rank's tensors as bytes: per tensor its name's length and characters, rows, cols, data.
std::vector<char> pack(const TensorTaps* taps) {
  std::vector<char> out;
  if (!taps) return out;
  auto put = [&](const void* p, size_t n) { out.insert(out.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n); };
  for (const TappedTensor& t : taps->tensors()) {
    const int64_t len = static_cast<int64_t>(t.name.size());
    put(&len, sizeof len);
    put(t.name.data(), t.name.size());
    put(&t.rows, sizeof t.rows);
    put(&t.cols, sizeof t.cols);
    put(t.data.data(), t.data.size() * sizeof(float));
  }
  return out;
}

void unpack(const std::vector<char>& in, int rank, std::map<std::string, std::pair<int, TappedTensor>>& out) {
  size_t at = 0;
  auto get = [&](void* p, size_t n) {
    std::memcpy(p, in.data() + at, n);
    at += n;
  };
  while (at < in.size()) {
    TappedTensor t;
    int64_t len = 0;
    get(&len, sizeof len);
    t.name.resize(static_cast<size_t>(len));
    get(t.name.data(), t.name.size());
    get(&t.rows, sizeof t.rows);
    get(&t.cols, sizeof t.cols);
    t.data.resize(static_cast<size_t>(t.rows * t.cols));
    get(t.data.data(), t.data.size() * sizeof(float));
    std::string name = t.name;
    out.emplace(std::move(name), std::make_pair(rank, std::move(t)));
  }
}

void check(herr_t ret, const std::string& path, const std::string& what) {
  if (ret < 0) throw UserError(path + ": cannot write the tensor dump (key 'debug.dump_file'): " + what + " failed");
}

void write_file(const std::string& path, const std::map<std::string, std::pair<int, TappedTensor>>& tensors,
                const TensorTaps& root_taps) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string tmp = path + ".partial";
  const hid_t file = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) throw UserError(tmp + ": cannot create the tensor dump (key 'debug.dump_file')");
  try {
    check(H5LTset_attribute_string(file, "/", "description",
                                   "lowsync debug.dump: named intermediate tensors of the first forward pass, rows = "
                                   "the packed tokens of /batch (see README, Debugging)"), tmp, "an attribute");
    for (const auto& [name, entry] : tensors) {
      const TappedTensor& t = entry.second;
      const hsize_t dims[2] = {static_cast<hsize_t>(t.rows), static_cast<hsize_t>(t.cols)};
      check(H5LTmake_dataset_float(file, name.c_str(), 2, dims, t.data.data()), tmp, "dataset " + name);
      const int rank = entry.first;
      check(H5LTset_attribute_int(file, name.c_str(), "rank", &rank, 1), tmp, "attribute rank of " + name);
    }
    const BatchLayout& layout = root_taps.layout();
    check(H5Gclose(H5Gcreate2(file, "/batch", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)), tmp, "group /batch");
    const std::vector<int32_t>& tokens = root_taps.tokens();
    hsize_t n = tokens.size();
    check(H5LTmake_dataset_int(file, "/batch/tokens", 1, &n, tokens.data()), tmp, "/batch/tokens");
    n = layout.positions.size();
    check(H5LTmake_dataset_int(file, "/batch/positions", 1, &n, layout.positions.data()), tmp, "/batch/positions");
    std::vector<long long> offsets;  // packed rows of sequence s: [offsets[s], offsets[s + 1])
    for (const SequenceSlot& s : layout.seqs) offsets.push_back(s.token_begin);
    offsets.push_back(layout.tokens());
    n = offsets.size();
    check(H5LTmake_dataset(file, "/batch/row_offsets", 1, &n, H5T_NATIVE_LLONG, offsets.data()), tmp,
          "/batch/row_offsets");
  } catch (...) {
    H5Fclose(file);
    std::remove(tmp.c_str());
    throw;
  }
  if (H5Fclose(file) < 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(path + ": cannot write the tensor dump (key 'debug.dump_file')");
  }
}

}  // namespace

int write_tensor_dump(Communicator& world, const TensorTaps* taps, const std::string& path) {
  const std::vector<char> mine = pack(taps);
  if (world.rank() != 0) {
    const int64_t size = static_cast<int64_t>(mine.size());
    world.send(&size, sizeof size, 0, kTagSize);
    if (size > 0) world.send(mine.data(), size, 0, kTagBytes);
    return 0;
  }
  std::map<std::string, std::pair<int, TappedTensor>> tensors;  // by name: (world rank, tensor)
  unpack(mine, 0, tensors);
  for (int r = 1; r < world.size(); ++r) {
    int64_t size = 0;
    world.recv(&size, sizeof size, r, kTagSize);
    std::vector<char> bytes(static_cast<size_t>(size));
    if (size > 0) world.recv(bytes.data(), size, r, kTagBytes);
    unpack(bytes, r, tensors);
  }
  static const TensorTaps none({});
  write_file(path, tensors, taps ? *taps : none);
  return static_cast<int>(tensors.size());
}

}  // namespace lowsync
