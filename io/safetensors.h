#pragma once
// Memory-mapped safetensors files. A tensor is read by copying (and converting to fp32) only the
// rows asked for, so a rank that needs a slice never touches the rest of the file's pages.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lowsync {

struct TensorInfo {
  std::string dtype;             // "F32", "F16", "BF16"
  std::vector<int64_t> shape;
  const unsigned char* data;     // into the mapping
  int64_t bytes = 0;             // stored size: numel x the dtype's size
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Checks the header against the file: every tensor's dtype, shape and data_offsets (within the
  // data, exactly its byte size, no two overlapping); a violation is a UserError naming the tensor.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
};

// All safetensors files of a model directory (single file or sharded with an index).
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& model_dir);

  bool has(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // Whole tensor as fp32, row-major. Reads refuse a NaN or infinity, naming the element.
  std::vector<float> read(const std::string& name) const;
  // Rows [begin, end) of the first dimension as fp32 (a 1-D tensor's elements).
  std::vector<float> read_rows(const std::string& name, int64_t begin, int64_t end) const;
  // Columns [begin, end) of every row of a 2-D tensor, copied row by row from the mapping.
  std::vector<float> read_cols(const std::string& name, int64_t begin, int64_t end) const;
  std::vector<std::string> names() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> where_;
  std::map<std::string, std::string> file_of_;
};

}  // namespace lowsync
