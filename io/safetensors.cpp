#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {
namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t TensorInfo::numel() const {
  // A zero dim first: the product of the others may be huge, but with a zero it is 0. Otherwise the
  // product is bounded by the checked byte size.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

static size_t dtype_size(const std::string& dtype) {
  if (dtype == "F32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
  if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
  if (dtype == "I32" || dtype == "U32") return 4;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

namespace {

// A header value as the file spells it, short enough for an error line.
std::string shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// A non-negative JSON integer no larger than `limit`, or -1. Offsets and dims are read as signed
// values first: a negative start must not wrap to a huge unsigned one that happens to pass.
int64_t non_negative(const json& v, uint64_t limit) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= limit ? static_cast<int64_t>(v.get<uint64_t>()) : -1;
  if (v.is_number_integer()) return v.get<int64_t>() >= 0 && uint64_t(v.get<int64_t>()) <= limit ? v.get<int64_t>() : -1;
  return -1;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = open_regular_file(path, "the model's safetensors weights");
  struct stat st{};
  ::fstat(fd, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw UserError(path + ": not a safetensors file (shorter than its 8-byte header length)");
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) throw UserError(path + ": mmap failed");
  const auto* bytes = static_cast<const unsigned char*>(map_);
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > size_ - 8)
    throw UserError(path + ": safetensors header length " + std::to_string(header_len) + " exceeds the " +
                    std::to_string(size_ - 8) + " bytes after it in the file");
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const std::exception& e) {
    throw UserError(path + ": safetensors header is not valid JSON (" + e.what() + ")");
  }
  if (!header.is_object()) throw UserError(path + ": safetensors header is not a JSON object of tensors");
  const unsigned char* data = bytes + 8 + header_len;
  const uint64_t data_size = size_ - 8 - header_len;

  // Each tensor: a known dtype, a shape of non-negative dims, and offsets with
  // 0 <= begin <= end <= data size and end - begin = its exact byte size.
  struct Extent {
    int64_t begin, end;
    std::string name;
  };
  std::vector<Extent> extents;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor '" + name + "'";
    if (!entry.is_object()) throw UserError(where + " is " + shown(entry) + "; expected an object with dtype, shape, data_offsets");
    if (!entry.contains("dtype") || !entry["dtype"].is_string())
      throw UserError(where + ": 'dtype' is " + (entry.contains("dtype") ? shown(entry["dtype"]) : "missing") +
                      "; expected a string such as \"F32\"");
    TensorInfo t;
    t.dtype = entry["dtype"].get<std::string>();
    const size_t esize = dtype_size(t.dtype);
    if (esize == 0) throw UserError(where + " has unknown dtype " + t.dtype);
    if (!entry.contains("shape") || !entry["shape"].is_array())
      throw UserError(where + ": 'shape' is " + (entry.contains("shape") ? shown(entry["shape"]) : "missing") +
                      "; expected a list of non-negative integers");
    // The byte size, dim by dim, never past the data: no overflow, and a shape the file cannot hold
    // is refused here.
    uint64_t nbytes = esize;
    for (const json& d : entry["shape"]) {
      const int64_t dim = non_negative(d, std::numeric_limits<int64_t>::max());
      if (dim < 0)
        throw UserError(where + ": 'shape' is " + shown(entry["shape"]) + "; expected a list of non-negative integers");
      t.shape.push_back(dim);
      if (dim != 0 && nbytes > data_size / uint64_t(dim)) nbytes = data_size + 1;  // too large, and stays so
      else nbytes *= uint64_t(dim);
    }
    const json* off = entry.contains("data_offsets") ? &entry["data_offsets"] : nullptr;
    const int64_t begin = off && off->is_array() && off->size() == 2 ? non_negative((*off)[0], data_size) : -1;
    const int64_t end = off && off->is_array() && off->size() == 2 ? non_negative((*off)[1], data_size) : -1;
    if (begin < 0 || end < begin)
      throw UserError(where + ": 'data_offsets' is " + (off ? shown(*off) : "missing") +
                      "; expected [begin, end] with 0 <= begin <= end <= " + std::to_string(data_size) +
                      " (the data after the header)");
    if (uint64_t(end - begin) != nbytes)
      throw UserError(where + ": 'data_offsets' " + shown(*off) + " span " + std::to_string(end - begin) + " bytes but " +
                      t.dtype + " " + shown(entry["shape"]) + " needs " +
                      (nbytes > data_size ? "more than the file holds" : std::to_string(nbytes)));
    t.bytes = end - begin;
    t.data = data + begin;
    tensors_[name] = t;
    extents.push_back({begin, end, name});
  }
  // No two tensors may share bytes: writing one would change the other, and a shared range is
  // what a file crafted to alias weights looks like. Empty tensors occupy nothing.
  std::sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  const Extent* last = nullptr;
  for (const Extent& e : extents) {
    if (e.begin == e.end) continue;
    if (last && e.begin < last->end)
      throw UserError(path + ": tensors '" + last->name + "' [" + std::to_string(last->begin) + ", " +
                      std::to_string(last->end) + ") and '" + e.name + "' [" + std::to_string(e.begin) + ", " +
                      std::to_string(e.end) + ") overlap; expected disjoint data_offsets");
    if (!last || e.end > last->end) last = &e;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ && map_ != MAP_FAILED) ::munmap(map_, size_);
}

CheckpointReader::CheckpointReader(const std::string& model_dir) : dir_(model_dir) {
  fs::path dir(model_dir);
  fs::path single = dir / "model.safetensors";
  fs::path index = dir / "model.safetensors.index.json";
  std::vector<std::string> shards;
  if (fs::exists(index)) {
    const std::string where = index.string();
    json j;
    try {
      j = json::parse(read_regular_file(where, "the model's safetensors index"));
    } catch (const json::exception& e) {
      throw UserError(where + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.is_object() || !j.contains("weight_map")) throw UserError(where + ": missing key 'weight_map'");
    if (!j["weight_map"].is_object())
      throw UserError(where + ": key 'weight_map' is " + shown(j["weight_map"]) + "; expected an object of tensor -> file");
    for (auto& [name, file] : j["weight_map"].items()) {
      // A shard is a file beside the index: a path elsewhere ("../x", "/dev/zero") is refused.
      if (!file.is_string() || file.get<std::string>().empty() ||
          fs::path(file.get<std::string>()).filename() != fs::path(file.get<std::string>()) ||
          file.get<std::string>() == "." || file.get<std::string>() == "..")
        throw UserError(where + ": weight_map['" + name + "'] is " + shown(file) +
                        "; expected the name of a safetensors file in the model directory");
      std::string f = file.get<std::string>();
      if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
    }
  } else if (fs::exists(single) || fs::is_symlink(single)) {
    shards.push_back("model.safetensors");
  } else if (fs::exists(dir / "pytorch_model.bin") || fs::exists(dir / "pytorch_model.bin.index.json")) {
    // PyTorch's pickle format: lowsync maps safetensors only (a pickle is code to run, not data to map).
    const std::string d = dir.string();
    throw UserError(d + ": has pytorch_model.bin weights but no model.safetensors; convert once with: python3 -c \"import "
                    "glob, torch; from safetensors.torch import save_file; sd = {}; [sd.update(torch.load(f, "
                    "map_location='cpu')) for f in sorted(glob.glob('" + d + "/pytorch_model*.bin'))]; save_file({k: "
                    "v.clone() for k, v in sd.items()}, '" + d + "/model.safetensors', metadata={'format': 'pt'})\"");
  } else {
    throw UserError(single.string() + ": no such file (nor model.safetensors.index.json); expected the model's safetensors weights");
  }
  for (const auto& s : shards) {
    files_.push_back(std::make_unique<SafetensorsFile>((dir / s).string()));
    for (const auto& [name, info] : files_.back()->tensors()) {
      if (where_.count(name))
        throw UserError(files_.back()->path() + ": tensor '" + name + "' is also in " + file_of_[name] +
                        "; expected each tensor in one file");
      where_[name] = &info;
      file_of_[name] = files_.back()->path();
    }
  }
}

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    throw UserError(dir_ + ": tensor '" + name + "' is missing from the checkpoint");
  return *it->second;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [n, _] : where_) out.push_back(n);
  return out;
}

static float half_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::vector<float> CheckpointReader::read(const std::string& name) const {
  const TensorInfo& t = info(name);
  return read_rows(name, 0, t.rows());
}

static void convert(const TensorInfo& t, int64_t first, int64_t n, float* out) {
  if (t.dtype == "F32") {
    std::memcpy(out, t.data + first * 4, n * 4);
  } else if (t.dtype == "F16") {
    const auto* p = reinterpret_cast<const uint16_t*>(t.data) + first;
    for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(p[i]);
  } else {  // BF16: the top half of an fp32
    const auto* p = reinterpret_cast<const uint16_t*>(t.data) + first;
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
      std::memcpy(&out[i], &bits, 4);
    }
  }
}

// A NaN or an infinity in a weight turns every activation it touches into NaN, and the job would
// write meaningless rows. Checked here, as each slice is converted, it costs one pass over values
// just written (still in cache) and names the tensor and element; a rank checks only its slices.
static void check_finite(const std::vector<float>& v, const std::string& dir, const std::string& name,
                         const std::function<std::string(size_t)>& where) {
  bool bad = false;
  for (float x : v) bad |= !(std::fabs(x) <= std::numeric_limits<float>::max());
  if (!bad) return;
  size_t i = 0;
  while (std::isfinite(v[i])) ++i;
  throw UserError(dir + ": tensor '" + name + "' holds " + (std::isnan(v[i]) ? "NaN" : "an infinity") + " at " +
                  where(i) + "; expected finite weights");
}

static void check_float(const TensorInfo& t, const std::string& dir, const std::string& name) {
  if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16")
    throw UserError(dir + ": tensor '" + name + "' has dtype " + t.dtype + "; expected F32, F16 or BF16");
}

std::vector<float> CheckpointReader::read_cols(const std::string& name, int64_t begin, int64_t end) const {
  const TensorInfo& t = info(name);
  check_float(t, dir_, name);
  if (t.shape.size() != 2 || begin < 0 || end > t.shape[1] || begin > end)
    throw UserError(dir_ + ": tensor '" + name + "': column range out of bounds");
  const int64_t rows = t.shape[0], cols = t.shape[1], n = end - begin;
  std::vector<float> out(rows * n);
  for (int64_t r = 0; r < rows; ++r) convert(t, r * cols + begin, n, out.data() + r * n);
  check_finite(out, file_of_.at(name), name, [&](size_t i) {
    return "[" + std::to_string(i / n) + ", " + std::to_string(begin + int64_t(i % n)) + "]";
  });
  return out;
}

std::vector<float> CheckpointReader::read_rows(const std::string& name, int64_t begin, int64_t end) const {
  const TensorInfo& t = info(name);
  const int64_t row = t.shape.empty() ? 1 : t.numel() / t.rows();
  if (begin < 0 || end > t.rows() || begin > end)
    throw UserError(dir_ + ": tensor '" + name + "': row range out of bounds");
  check_float(t, dir_, name);
  const int64_t n = (end - begin) * row;
  std::vector<float> out(n);
  convert(t, begin * row, n, out.data());
  check_finite(out, file_of_.at(name), name, [&](size_t i) {
    const int64_t flat = begin * row + int64_t(i);
    return t.shape.size() == 2 ? "[" + std::to_string(flat / row) + ", " + std::to_string(flat % row) + "]"
                               : "element " + std::to_string(flat);
  });
  return out;
}

}  // namespace lowsync
