#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/error.h"

namespace lowsync {
namespace fs = std::filesystem;
using json = nlohmann::json;

int64_t TensorInfo::numel() const {
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

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw UserError(path + ": cannot open model weights (" + std::strerror(errno) + ")");
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
  if (header_len > size_ - 8) throw UserError(path + ": safetensors header length exceeds the file size");
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const std::exception& e) {
    throw UserError(path + ": safetensors header is not valid JSON (" + e.what() + ")");
  }
  const unsigned char* data = bytes + 8 + header_len;
  const size_t data_size = size_ - 8 - header_len;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    TensorInfo t;
    t.dtype = entry.at("dtype").get<std::string>();
    t.shape = entry.at("shape").get<std::vector<int64_t>>();
    auto off = entry.at("data_offsets").get<std::vector<uint64_t>>();
    size_t esize = dtype_size(t.dtype);
    if (esize == 0)
      throw UserError(path + ": tensor '" + name + "' has unknown dtype " + t.dtype);
    if (off.size() != 2 || off[1] > data_size || off[1] - off[0] != t.numel() * esize)
      throw UserError(path + ": tensor '" + name + "' has data offsets that do not match its shape");
    t.data = data + off[0];
    tensors_[name] = t;
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
    std::ifstream in(index);
    json j;
    try {
      j = json::parse(in);
    } catch (const std::exception& e) {
      throw UserError(index.string() + ": not valid JSON (" + e.what() + ")");
    }
    if (!j.contains("weight_map")) throw UserError(index.string() + ": missing key 'weight_map'");
    for (auto& [name, file] : j["weight_map"].items()) {
      std::string f = file.get<std::string>();
      if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
    }
  } else if (fs::exists(single)) {
    shards.push_back("model.safetensors");
  } else {
    throw UserError(single.string() + ": no such file (nor model.safetensors.index.json); expected the model's safetensors weights");
  }
  for (const auto& s : shards) {
    files_.push_back(std::make_unique<SafetensorsFile>((dir / s).string()));
    for (const auto& [name, info] : files_.back()->tensors()) {
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
  return out;
}

}  // namespace lowsync
