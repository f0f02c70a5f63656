#include "jobs/result_writer.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <thread>

#ifndef LOWSYNC_VERSION
#define LOWSYNC_VERSION "dev"
#endif

namespace lowsync {

namespace {

// HDF5 closes (and so flushes) every file still open when the process exits. An output that
// failed must not be flushed again (see ResultWriter::fail), and one left open by an abort holds
// its last successful flush already; files are closed explicitly otherwise. This must run before
// the library's first call, hence a static initialiser.
const bool kNoCloseAtExit = (H5dont_atexit(), true);

// Space a batch may need for HDF5 metadata besides its chunks: a chunk-index B-tree node is about
// 2 KiB, an object header or heap block less; a few of each at most.
constexpr int64_t kMetadataReserve = 32 * 1024;

// An HDF5 call that failed; the message is what HDF5's error stack says about it.
struct Hdf5Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// HDF5's error stack as one phrase, and the stack cleared. HDF5's own printing is off (it would
// print dozens of lines per failure); the operating system's reason leads, since a file operation
// that failed says it as "error message = '...'", then the outermost and innermost HDF5 steps.
std::string hdf5_error_text() {
  struct Walk {
    std::vector<std::string> steps;
    std::string os_reason;
  } walk;
  auto visit = [](unsigned, const H5E_error2_t* e, void* data) -> herr_t {
    auto& w = *static_cast<Walk*>(data);
    const std::string desc = e->desc ? e->desc : "";
    const auto at = desc.find("error message = '");
    if (at != std::string::npos && w.os_reason.empty()) {
      const auto from = at + std::strlen("error message = '");
      w.os_reason = desc.substr(from, desc.find('\'', from) - from);
    }
    // "file write failed: time = ..., filename = ..., ..." -> "file write failed"
    w.steps.push_back(std::string(e->func_name ? e->func_name : "?") + "(): " + desc.substr(0, desc.find(':')));
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, visit, &walk);  // from the API call inwards
  H5Eclear2(H5E_DEFAULT);
  if (walk.steps.empty()) return "an HDF5 call failed without saying why";
  std::string hdf5 = walk.steps.front();
  if (walk.steps.size() > 1) hdf5 += "; " + walk.steps.back();
  return (walk.os_reason.empty() ? "HDF5 error" : walk.os_reason) + " (HDF5: " + hdf5 + ")";
}

// Throws Hdf5Failure when an HDF5 call returned an error (a negative value); returns its value.
template <class T>
T h5(T ret) {
  if (ret < 0) throw Hdf5Failure(hdf5_error_text());
  return ret;
}

// An HDF5 identifier, closed when it goes out of scope; a failed open or create throws.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t)) : id_(h5(id)), close_(close) {}
  ~Id() { close_(id_); }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  operator hid_t() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

const char* values_dataset(const std::string& task) {
  return task == "generate" ? "/generated/token_ids" : "/scores/token_logprobs";
}
const char* offsets_dataset(const std::string& task) {
  return task == "generate" ? "/generated/offsets" : "/scores/offsets";
}

void create_dataset(hid_t file, const char* name, hid_t type, std::vector<hsize_t> dims, std::vector<hsize_t> max_dims,
                    std::vector<hsize_t> chunk) {
  Id space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data()), H5Sclose);
  Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  h5(H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data()));
  Id lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  h5(H5Pset_create_intermediate_group(lcpl, 1));
  Id ds(H5Dcreate2(file, name, type, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose);
}

void write_string_attr(hid_t file, const char* name, const std::string& value);

// generate's datasets besides the token ids: each new token's log-prob (aligned with
// /generated/token_ids), its top-K alternatives when asked, and each row's finish reason.
void create_generate_extras(hid_t file, hsize_t N, int top_k) {
  const hsize_t unlimited = H5S_UNLIMITED, K = top_k;
  create_dataset(file, "/generated/logprobs", H5T_NATIVE_FLOAT, {0}, {unlimited}, {4096});
  if (K > 0) {
    const hsize_t chunk = std::max<hsize_t>(1, 4096 / K);
    create_dataset(file, "/generated/top_ids", H5T_NATIVE_INT32, {0, K}, {unlimited, K}, {chunk, K});
    create_dataset(file, "/generated/top_logprobs", H5T_NATIVE_FLOAT, {0, K}, {unlimited, K}, {chunk, K});
  }
  create_dataset(file, "/generated/finish_reason", H5T_NATIVE_UINT8, {N}, {N},
                 {std::max<hsize_t>(1, std::min<hsize_t>(N, 4096))});
  Id ds(H5Dopen2(file, "/generated/finish_reason", H5P_DEFAULT), H5Dclose);
  write_string_attr(ds, "codes", kFinishReasonCodes);
}

// The datasets that hold one entry per generated token besides /generated/token_ids.
std::vector<const char*> per_token_extras(int top_k) {
  if (top_k == 0) return {"/generated/logprobs"};
  return {"/generated/logprobs", "/generated/top_ids", "/generated/top_logprobs"};
}

// String attributes are UTF-8 variable-length strings, which h5py reads as `str` (a fixed-length
// one reads as bytes). Attributes on `obj`: the file, or a dataset.
void write_string_attr(hid_t obj, const char* name, const std::string& value) {
  Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  h5(H5Tset_size(type, H5T_VARIABLE));
  h5(H5Tset_cset(type, H5T_CSET_UTF8));
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (h5(H5Aexists(obj, name)) > 0) h5(H5Adelete(obj, name));
  Id attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* text = value.c_str();
  h5(H5Awrite(attr, type, &text));
}

// Reads a string attribute, variable-length or fixed-length (files written before lowsync wrote
// UTF-8 variable-length strings, and h5py's fixed-length ones).
std::string read_string_attr(hid_t file, const char* name) {
  if (h5(H5Aexists(file, name)) <= 0) return "";
  Id attr(H5Aopen(file, name, H5P_DEFAULT), H5Aclose);
  Id type(H5Aget_type(attr), H5Tclose);
  if (H5Tget_class(type) != H5T_STRING) return "";
  if (h5(H5Tis_variable_str(type)) > 0) {
    Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
    h5(H5Tset_size(mem, H5T_VARIABLE));
    h5(H5Tset_cset(mem, H5Tget_cset(type)));
    char* text = nullptr;
    h5(H5Aread(attr, mem, &text));
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  // One byte more than stored: a null-padded string (h5py's) that fills its size keeps its last
  // character when converted to a null-terminated one.
  std::string value(H5Tget_size(type) + 1, '\0');
  Id mem(H5Tcopy(H5T_C_S1), H5Tclose);
  h5(H5Tset_size(mem, value.size()));
  h5(H5Aread(attr, mem, value.data()));
  value.resize(std::strlen(value.c_str()));
  return value;
}

void write_u8_attr(hid_t file, const char* name, uint8_t v) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (h5(H5Aexists(file, name)) > 0) h5(H5Adelete(file, name));
  Id attr(H5Acreate2(file, name, H5T_NATIVE_UINT8, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  h5(H5Awrite(attr, H5T_NATIVE_UINT8, &v));
}

void write_i64_attr(hid_t file, const char* name, int64_t v) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (h5(H5Aexists(file, name)) > 0) h5(H5Adelete(file, name));
  Id attr(H5Acreate2(file, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  h5(H5Awrite(attr, H5T_NATIVE_INT64, &v));
}

void write_f64_attr(hid_t file, const char* name, double v) {
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  if (h5(H5Aexists(file, name)) > 0) h5(H5Adelete(file, name));
  Id attr(H5Acreate2(file, name, H5T_NATIVE_DOUBLE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  h5(H5Awrite(attr, H5T_NATIVE_DOUBLE, &v));
}

// Writes `count` rows (of `row_len` elements) at row `first` of a dataset, growing it if needed.
void write_rows(hid_t file, const char* name, hid_t type, int64_t first, int64_t count, int64_t row_len,
                const void* data) {
  if (count == 0) return;
  // No chunk cache: each chunk is written by H5Dwrite itself, so a failed write is reported
  // here, before any metadata that points at it is flushed. (A cached chunk is written by
  // H5Fflush, and HDF5 1.10 reports success when that write fails: the /done flags written next
  // would then mark rows done whose data is not in the file.)
  Id dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  h5(H5Pset_chunk_cache(dapl, 0, 0, 1.0));
  Id ds(H5Dopen2(file, name, dapl), H5Dclose);
  hsize_t dims[2];
  int rank;
  {
    Id space(H5Dget_space(ds), H5Sclose);
    rank = h5(H5Sget_simple_extent_ndims(space));
    h5(H5Sget_simple_extent_dims(space, dims, nullptr));
  }
  if (dims[0] < hsize_t(first + count)) {
    dims[0] = first + count;
    h5(H5Dset_extent(ds, dims));
  }
  Id space(H5Dget_space(ds), H5Sclose);
  hsize_t start[2] = {hsize_t(first), 0}, cnt[2] = {hsize_t(count), hsize_t(row_len)};
  h5(H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, cnt, nullptr));
  Id mem(H5Screate_simple(rank, cnt, nullptr), H5Sclose);
  h5(H5Dwrite(ds, type, mem, space, H5P_DEFAULT, data));
}

// The file space writing rows [first, first + count) of a dataset can take: the chunks they
// touch that are not allocated yet (a chunk is allocated when first written).
int64_t new_chunk_bytes(hid_t file, const char* name, int64_t first, int64_t count) {
  if (count == 0) return 0;
  Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Id dcpl(H5Dget_create_plist(ds), H5Pclose);
  Id type(H5Dget_type(ds), H5Tclose);
  hsize_t chunk[2] = {1, 1};
  const int rank = h5(H5Pget_chunk(dcpl, 2, chunk));
  int64_t chunk_bytes = static_cast<int64_t>(H5Tget_size(type));
  for (int d = 0; d < rank; ++d) chunk_bytes *= static_cast<int64_t>(chunk[d]);
  int64_t bytes = 0;
  for (int64_t c = first / int64_t(chunk[0]); c <= (first + count - 1) / int64_t(chunk[0]); ++c) {
    hsize_t offset[2] = {hsize_t(c) * chunk[0], 0}, stored = 0;
    // Past the dataset's current extent HDF5 cannot answer: such a chunk is new.
    if (H5Dget_chunk_storage_size(ds, offset, &stored) < 0) H5Eclear2(H5E_DEFAULT);
    if (stored == 0) bytes += chunk_bytes;
  }
  return bytes;
}

template <class T>
std::vector<T> read_all(hid_t file, const char* name, hid_t type) {
  Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Id space(H5Dget_space(ds), H5Sclose);
  std::vector<T> out(h5(H5Sget_simple_extent_npoints(space)));
  if (!out.empty()) h5(H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()));
  return out;
}

int64_t length_of(hid_t file, const char* name) {
  Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Id space(H5Dget_space(ds), H5Sclose);
  hsize_t dims[8];
  if (h5(H5Sget_simple_extent_ndims(space)) > 8) return 0;
  h5(H5Sget_simple_extent_dims(space, dims, nullptr));
  return static_cast<int64_t>(dims[0]);
}

// "int32 [25]", "float32 [24, 64]", ...: a dataset's element type and shape, to compare with what
// the task needs.
std::string describe_dataset(hid_t file, const char* name) {
  Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  Id type(H5Dget_type(ds), H5Tclose);
  const H5T_class_t cls = H5Tget_class(type);
  const size_t bits = 8 * H5Tget_size(type);
  std::string s = cls == H5T_FLOAT                                ? "float" + std::to_string(bits)
                  : cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE ? "uint" + std::to_string(bits)
                  : cls == H5T_INTEGER                            ? "int" + std::to_string(bits)
                                                                  : "non-numeric";
  Id space(H5Dget_space(ds), H5Sclose);
  hsize_t dims[8];
  const int rank = h5(H5Sget_simple_extent_ndims(space));
  if (rank > 8) return s + " of rank " + std::to_string(rank);
  h5(H5Sget_simple_extent_dims(space, dims, nullptr));
  s += " [";
  for (int d = 0; d < rank; ++d) s += (d ? ", " : "") + std::to_string(dims[d]);
  return s + "]";
}

// Whether a link exists along the whole path ("/generated/offsets" needs "/generated" first).
bool path_exists(hid_t file, const std::string& path) {
  for (size_t at = path.find('/', 1);; at = path.find('/', at + 1)) {
    const std::string prefix = path.substr(0, at);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) {
      H5Eclear2(H5E_DEFAULT);
      return false;
    }
    if (at == std::string::npos) return true;
  }
}

// Job fingerprints (JobConfig::fingerprint: a YAML mapping) as dotted keys -> values. Paths are
// compared as canonical paths, so that ./x and x are the same file (and files that stored a
// relative path still resume from the same folder).
std::map<std::string, std::string> fingerprint_keys(const std::string& fingerprint) {
  std::map<std::string, std::string> out;
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n, const std::string& key) {
    if (n.IsMap()) {
      for (const auto& kv : n) walk(kv.second, (key.empty() ? "" : key + ".") + kv.first.as<std::string>());
    } else if (n.IsScalar()) {
      out[key] = n.as<std::string>();
    } else {
      YAML::Emitter e;
      e << YAML::Flow << n;
      out[key] = e.c_str();
    }
  };
  walk(YAML::Load(fingerprint), "");
  for (const char* path_key : {"model", "input", "parallel.spd.from"}) {
    auto it = out.find(path_key);
    std::error_code ec;
    if (it != out.end() && !it->second.empty()) {
      auto canonical = std::filesystem::weakly_canonical(it->second, ec);
      if (!ec) it->second = canonical.string();
    }
  }
  return out;
}

// "" when two job fingerprints describe the same job, else which keys differ and how.
std::string fingerprint_difference(const std::string& file, const std::string& job) {
  std::map<std::string, std::string> a, b;
  try {
    a = fingerprint_keys(file);
    b = fingerprint_keys(job);
  } catch (const YAML::Exception&) {  // not YAML (a path with ": " in it, say): compare as text
    return file == job ? "" : "the job differs from its 'job_yaml' attribute";
  }
  std::string diff;
  auto shown = [](const std::map<std::string, std::string>& m, const std::string& k) {
    auto it = m.find(k);
    return it == m.end() ? std::string("none") : it->second.empty() ? std::string("''") : it->second;
  };
  std::map<std::string, bool> keys;
  for (const auto& [k, _] : a) keys[k] = true;
  for (const auto& [k, _] : b) keys[k] = true;
  for (const auto& [k, _] : keys)
    if (shown(a, k) != shown(b, k))
      diff += (diff.empty() ? "" : "; ") + k + " differs (file: " + shown(a, k) + ", job: " + shown(b, k) + ")";
  return diff;
}

// Each dataset's `description` attribute: what a reader of the file needs to know without the
// README (README "Results" says more). Datasets a task does not have are skipped.
const std::vector<std::pair<const char*, const char*>> kDescriptions = {
    {"/ids", "row i's id, copied unchanged from the input's /ids (with generate.n, its prompt's id)"},
    {"/sample", "generate.n: which sample of its prompt row i is (0-based; row i is input prompt i / n)"},
    {"/done", "1 when row i's results are complete and on disk; a row not done holds nothing meaningful"},
    {"/latency_ms", "milliseconds from the moment row i's batch reached its replica to the end of the batch's "
                    "last row (every row of a batch has the same value; queueing and writing not included)"},
    {"/prefill_ms", "generate: milliseconds from row i's batch reaching its replica to the end of the pass that "
                    "produced the row's first new token (its prompt's prefill; with continuous batching also its "
                    "wait for a sequence slot); NaN if not measured"},
    {"/decode_ms", "generate: milliseconds from row i's first new token to the end of the pass that produced its "
                   "last (0 for one new token); NaN if not measured"},
    {"/generated/token_ids", "new tokens of every row concatenated (CSR values; the prompt is not repeated)"},
    {"/generated/offsets", "row i's new tokens are token_ids[offsets[i]:offsets[i+1]]"},
    {"/scores/token_logprobs", "natural-log probability of each target token given the prompt and the targets "
                               "before it, every row's concatenated (CSR values)"},
    {"/scores/offsets", "row i's target log-probs are token_logprobs[offsets[i]:offsets[i+1]]"},
    {"/scores/sum_logprob", "sum of row i's target log-probs"},
    {"/embeddings", "row i's pooled final hidden state (job key embed.pooling; L2-normalised if embed.normalize)"},
    {"/generated/logprobs", "natural-log probability of each new token under the model's own distribution "
                            "(log_softmax of the logits, before temperature, penalties and cuts); aligned with "
                            "token_ids"},
    {"/generated/top_ids", "per new token, the generate.logprobs most likely token ids, most likely first"},
    {"/generated/top_logprobs", "their log-probs, aligned with top_ids"},
    {"/generated/finish_reason", "why row i stopped: 0 length, 1 eos, 2 stop, 3 context (attribute codes)"},
    {"/scores/num_tokens", "number of target tokens scored in row i"},
};

// Sets the `description` of every dataset of the table that the file has.
void describe_datasets(hid_t file) {
  for (const auto& [name, text] : kDescriptions) {
    if (!path_exists(file, name)) continue;
    Id ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
    write_string_attr(ds, "description", text);
  }
}

// Per-row float32 timings beside /latency_ms, by task: generate's time to first token and decode
// time (score and embed compute a row in one pass, which /latency_ms already is). Rows written
// before a file had them (a --resume of an older file) read NaN.
struct RowTiming {
  const char* name;
  float RowResult::*value;
};
std::vector<RowTiming> row_timings(const std::string& task) {
  if (task == "generate") return {{"/prefill_ms", &RowResult::prefill_ms}, {"/decode_ms", &RowResult::decode_ms}};
  return {};
}

void create_timing(hid_t file, const char* name, hsize_t rows) {
  Id space(H5Screate_simple(1, &rows, nullptr), H5Sclose);
  Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(rows, 4096));
  h5(H5Pset_chunk(dcpl, 1, &chunk));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  h5(H5Pset_fill_value(dcpl, H5T_NATIVE_FLOAT, &nan));
  Id ds(H5Dcreate2(file, name, H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
}

// /ids: the rows' ids as the input holds them, integers in the input's integer dtype or text as
// UTF-8 variable-length strings. Written whole when the file is created (ids need no compute).
void write_ids(hid_t file, const RowIds& ids) {
  const hsize_t n = ids.kind == RowIds::Kind::integer ? ids.integers.size() : ids.texts.size();
  Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  if (ids.kind == RowIds::Kind::integer) {
    Id ds(H5Dcreate2(file, "/ids", static_cast<hid_t>(ids.file_type), space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
          H5Dclose);
    if (n > 0) h5(H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids.integers.data()));
    return;
  }
  Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  h5(H5Tset_size(type, H5T_VARIABLE));
  h5(H5Tset_cset(type, H5T_CSET_UTF8));
  Id ds(H5Dcreate2(file, "/ids", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  std::vector<const char*> texts;
  for (const std::string& t : ids.texts) texts.push_back(t.c_str());
  if (n > 0) h5(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, texts.data()));
}

// The file space /ids takes, at most (variable-length strings live in a global heap).
int64_t ids_bytes(const RowIds& ids) {
  int64_t bytes = 8 * static_cast<int64_t>(ids.integers.size());
  for (const std::string& t : ids.texts) bytes += 32 + static_cast<int64_t>(t.size());
  return bytes;
}

}  // namespace

std::string model_fingerprint(const ModelConfig& model) {
  namespace fs = std::filesystem;
  std::string s = model.json_text;
  for (const char* f : {"model.safetensors", "model.safetensors.index.json"}) {
    fs::path p = fs::path(model.dir) / f;
    if (fs::exists(p)) s += std::string(f) + ":" + std::to_string(fs::file_size(p)) + ";";
  }
  return std::to_string(std::hash<std::string>{}(s));
}

ResultWriter::ResultWriter(const JobConfig& job, const ModelConfig& model, const RowRange& range, int64_t input_rows,
                           const RowIds& ids, bool resume)
    : path_(job.output), task_(job.task), rows_(range.count()), first_input_row_(range.first),
      input_rows_(input_rows), hidden_(model.hidden), top_k_(job.task == "generate" ? job.generate.logprobs : 0) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures are reported in one line (hdf5_error_text)
  const bool exists = std::filesystem::exists(path_);
  if (resume && exists) {
    reopen(job, model, ids);
  } else if (exists) {
    throw UserError(path_ + ": the output file exists; pass --resume to continue it, or choose another output");
  } else {
    create(job, model, ids);
  }
}

void ResultWriter::create(const JobConfig& job, const ModelConfig& model, const RowIds& ids) {
  file_ = H5Fcreate(path_.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) throw UserError(path_ + ": cannot create the output file: " + hdf5_error_text());
  try {
    const std::string reason = reserve(kMetadataReserve + ids_bytes(ids));
    if (!reason.empty()) throw Hdf5Failure(reason);
    const hsize_t N = rows_, unlimited = H5S_UNLIMITED;
    if (task_ == "generate" || task_ == "score") {
      hid_t vtype = task_ == "generate" ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT;
      create_dataset(file_, values_dataset(task_), vtype, {0}, {unlimited}, {4096});
      create_dataset(file_, offsets_dataset(task_), H5T_NATIVE_INT64, {N + 1}, {N + 1},
                     {std::min<hsize_t>(N + 1, 4096)});
      if (task_ == "score") {
        const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(N, 4096));
        create_dataset(file_, "/scores/sum_logprob", H5T_NATIVE_DOUBLE, {N}, {N}, {chunk});
        create_dataset(file_, "/scores/num_tokens", H5T_NATIVE_INT32, {N}, {N}, {chunk});
      }
      if (task_ == "generate") create_generate_extras(file_, N, top_k_);
    } else {
      const hsize_t H = hidden_;
      create_dataset(file_, "/embeddings", H5T_NATIVE_FLOAT, {N, H}, {N, H},
                     {std::max<hsize_t>(1, std::min<hsize_t>(N, 64)), H});
    }
    const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(N, 4096));
    create_dataset(file_, "/latency_ms", H5T_NATIVE_FLOAT, {N}, {N}, {chunk});
    create_dataset(file_, "/done", H5T_NATIVE_UINT8, {N}, {N}, {chunk});
    for (const RowTiming& t : row_timings(task_)) create_timing(file_, t.name, N);
    if (ids.kind != RowIds::Kind::none) write_ids(file_, ids);
    if (task_ == "generate" && job.generate.n > 1) {
      // Which sample of its prompt each row is: job row r is prompt r / n, sample r % n.
      std::vector<int32_t> sample(N);
      for (hsize_t i = 0; i < N; ++i) sample[i] = static_cast<int32_t>((first_input_row_ + int64_t(i)) % job.generate.n);
      Id space(H5Screate_simple(1, &N, nullptr), H5Sclose);
      Id ds(H5Dcreate2(file_, "/sample", H5T_NATIVE_INT32, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
      if (N > 0) h5(H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, sample.data()));
    }
    describe_datasets(file_);
    write_string_attr(file_, "job_yaml", job.to_yaml());
    write_string_attr(file_, "job_fingerprint", job.fingerprint());
    write_string_attr(file_, "model", model.dir);
    write_string_attr(file_, "model_architecture", model.architecture);
    write_string_attr(file_, "model_fingerprint", model_fingerprint(model));
    write_string_attr(file_, "lowsync_version", LOWSYNC_VERSION);
    write_string_attr(file_, "task", task_);
    write_i64_attr(file_, "input_first_row", first_input_row_);
    write_i64_attr(file_, "input_total_rows", input_rows_);
    write_i64_attr(file_, "samples_per_prompt", task_ == "generate" ? job.generate.n : 1);
    write_u8_attr(file_, "complete", 0);
    h5(H5Fflush(file_, H5F_SCOPE_GLOBAL));
  } catch (const Hdf5Failure& e) {
    // Nothing in it is worth keeping, and leaving it would make the next run refuse to start.
    try {
      fail("creating the output", e.what());
    } catch (const OutputError&) {
      std::filesystem::remove(path_);
      throw;
    }
  }
}

void ResultWriter::reopen(const JobConfig& job, const ModelConfig& model, const RowIds& ids) {
  // A rank of the interrupted run may still be exiting with the file open (HDF5 locks it): give
  // it a few seconds before calling the file unreadable.
  file_ = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  for (int wait = 0; file_ < 0 && wait < 20; ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    file_ = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  }
  H5Eclear2(H5E_DEFAULT);
  if (file_ < 0)
    throw UserError(path_ + ": cannot re-open the output for --resume (not a readable HDF5 file, or another "
                    "process still has it open)");
  // The refusals below leave the file as it is: closing it writes nothing, since nothing changed.
  auto refuse = [&](const std::string& why) {
    H5Fclose(file_);
    file_ = -1;
    throw UserError(path_ + ": --resume refused: " + why);
  };
  try {
    const std::string diff = fingerprint_difference(read_string_attr(file_, "job_fingerprint"), job.fingerprint());
    if (!diff.empty())
      refuse("the file was written by a different job: " + diff + " (see its 'job_yaml' attribute)");
    if (read_string_attr(file_, "model_fingerprint") != model_fingerprint(model))
      refuse("the model in " + model.dir + " differs from the one that wrote it");

    // Every dataset this task reads or appends to, with the type and shape it was created with: a
    // damaged file is refused here, naming what is wrong, instead of failing somewhere later.
    const std::string N = std::to_string(rows_), N1 = std::to_string(rows_ + 1);
    std::vector<std::pair<std::string, std::string>> expected = {{"/done", "uint8 [" + N + "]"},
                                                                 {"/latency_ms", "float32 [" + N + "]"}};
    if (task_ == "generate" || task_ == "score") {
      expected.push_back({values_dataset(task_), task_ == "generate" ? "int32 [*]" : "float32 [*]"});
      expected.push_back({offsets_dataset(task_), "int64 [" + N1 + "]"});
      if (task_ == "score") {
        expected.push_back({"/scores/sum_logprob", "float64 [" + N + "]"});
        expected.push_back({"/scores/num_tokens", "int32 [" + N + "]"});
      }
      if (task_ == "generate") {
        const std::string K = std::to_string(top_k_);
        expected.push_back({"/generated/logprobs", "float32 [*]"});
        if (top_k_ > 0) {
          expected.push_back({"/generated/top_ids", "int32 [*, " + K + "]"});
          expected.push_back({"/generated/top_logprobs", "float32 [*, " + K + "]"});
        }
        expected.push_back({"/generated/finish_reason", "uint8 [" + N + "]"});
      }
    } else {
      expected.push_back({"/embeddings", "float32 [" + N + ", " + std::to_string(hidden_) + "]"});
    }
    for (const RowTiming& t : row_timings(task_))  // absent from files written before they existed
      if (path_exists(file_, t.name)) expected.push_back({t.name, "float32 [" + N + "]"});
    for (const auto& [name, want] : expected) {
      if (!path_exists(file_, name)) {
        // Files from before log-probs, finish reasons and num_tokens lack them without being damaged.
        const bool newer = name == "/generated/logprobs" || name == "/generated/finish_reason" ||
                           name == "/scores/num_tokens";
        if (newer && path_exists(file_, values_dataset(task_)))
          refuse("the file has no " + name + ": it was written by an earlier lowsync; finish it with that version, "
                 "or start a new output");
        refuse("the file is damaged: dataset " + name + " is missing");
      }
      std::string got = describe_dataset(file_, name.c_str());
      if (want.find("[*") != std::string::npos && got.find('[') != std::string::npos) {  // any length
        const size_t open = got.find('['), end = got.find_first_of(",]", open);
        got = got.substr(0, open + 1) + "*" + got.substr(end);
      }
      if (got != want) refuse("the file is damaged: dataset " + name + " is " + got + ", expected " + want);
    }

    previous_report_json_ = read_string_attr(file_, "run_report_json");
    auto done = read_all<uint8_t>(file_, "/done", H5T_NATIVE_UINT8);
    while (next_row_ < rows_ && done[next_row_]) ++next_row_;
    if (task_ == "generate" || task_ == "score") {
      // Data past the last done row belongs to an interrupted batch: drop it.
      auto offsets = read_all<int64_t>(file_, offsets_dataset(task_), H5T_NATIVE_INT64);
      values_ = offsets[next_row_];
      bool fits = offsets[0] == 0 && values_ <= length_of(file_, values_dataset(task_));
      for (int64_t r = 0; r < next_row_; ++r) fits = fits && offsets[r] <= offsets[r + 1];
      if (task_ == "generate")
        for (const char* name : per_token_extras(top_k_)) fits = fits && values_ <= length_of(file_, name);
      if (task_ == "score") {
        const auto sums = read_all<double>(file_, "/scores/sum_logprob", H5T_NATIVE_DOUBLE);
        for (int64_t r = 0; r < next_row_; ++r) sum_logprob_ += sums[r];
      }
      if (!fits)
        refuse("the file is damaged: the done rows' " + std::string(offsets_dataset(task_)) + " do not fit " +
               values_dataset(task_));
    }
  } catch (const Hdf5Failure& e) {
    refuse(std::string("cannot read it: ") + e.what());
  }

  try {
    const std::string reason = reserve(kMetadataReserve + ids_bytes(ids));
    if (!reason.empty()) throw Hdf5Failure(reason);
    // A file written before lowsync carried ids gains them (and its datasets' descriptions).
    if (ids.kind != RowIds::Kind::none && !path_exists(file_, "/ids")) write_ids(file_, ids);
    for (const RowTiming& t : row_timings(task_))
      if (!path_exists(file_, t.name)) create_timing(file_, t.name, rows_);
    describe_datasets(file_);
    if (task_ == "generate" || task_ == "score") {
      Id ds(H5Dopen2(file_, values_dataset(task_), H5P_DEFAULT), H5Dclose);
      hsize_t dims[1] = {hsize_t(values_)};
      h5(H5Dset_extent(ds, dims));
    }
    if (task_ == "generate")
      for (const char* name : per_token_extras(top_k_)) {
        Id ds(H5Dopen2(file_, name, H5P_DEFAULT), H5Dclose);
        hsize_t dims[2] = {hsize_t(values_), hsize_t(top_k_)};  // the second only for top_*
        h5(H5Dset_extent(ds, dims));
      }
    write_u8_attr(file_, "complete", 0);
    h5(H5Fflush(file_, H5F_SCOPE_GLOBAL));
  } catch (const Hdf5Failure& e) {
    fail("re-opening the output for --resume", e.what());
  }
}

ResultWriter::~ResultWriter() {
  if (file_ >= 0) H5Fclose(file_);
}

// Makes sure the file system holds `bytes` more for this file before HDF5 writes anything, so
// that a full disk stops a batch before HDF5 has changed the file rather than in the middle of a
// flush, whose metadata writes can land in place (superblock, object headers) and fail where new
// (a B-tree node), leaving the file unreadable. Returns "" when the space is there (or the file system cannot reserve: then a full disk
// is caught at the write), else the operating system's reason.
std::string ResultWriter::reserve(int64_t bytes) {
  if (!can_reserve_) return "";
  void* handle = nullptr;
  if (H5Fget_vfd_handle(file_, H5P_DEFAULT, &handle) < 0 || handle == nullptr) {
    H5Eclear2(H5E_DEFAULT);
    can_reserve_ = false;
    return "";
  }
  const int fd = *static_cast<int*>(handle);
  struct stat st;
  if (fstat(fd, &st) != 0) return std::strerror(errno);
  // Past the end, without changing the file's size: HDF5 truncates the file to the size it
  // expects at every flush, and would give back space reserved inside it.
  int rc;
  do rc = fallocate(fd, FALLOC_FL_KEEP_SIZE, st.st_size, bytes);
  while (rc != 0 && errno == EINTR);
  if (rc == 0) return "";
  if (errno == EOPNOTSUPP || errno == ENOSYS) {
    can_reserve_ = false;
    return "";
  }
  return std::string(std::strerror(errno)) + " (needed up to " + std::to_string((bytes + 1023) / 1024) +
         " KiB more)";
}

// After a failed write nothing more may reach the file: HDF5 would go on flushing metadata that
// points at blocks never written, and H5Fclose flushes too (and when that fails, HDF5 1.10 leaves
// a dangling identifier that crashes the process at exit). So the file is not closed: its
// descriptor is swapped for a read-only one on the same file, which makes any later write fail
// harmlessly and releases HDF5's lock for a --resume, and the identifier is left to the process's
// end, where HDF5 does not close files (H5dont_atexit below). The file stays as its last successful
// flush left it.
void ResultWriter::fail(const std::string& what, const std::string& cause) {
  void* handle = nullptr;
  if (file_ >= 0 && H5Fget_vfd_handle(file_, H5P_DEFAULT, &handle) >= 0 && handle != nullptr) {
    const int fd = *static_cast<int*>(handle);
    int read_only = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (read_only < 0) read_only = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (read_only >= 0) {
      dup2(read_only, fd);
      close(read_only);
    }
  }
  H5Eclear2(H5E_DEFAULT);
  file_ = -1;
  throw OutputError(path_ + ": " + what + " failed: " + cause);
}

void ResultWriter::append(const std::vector<RowResult>& results) {
  const int64_t first = next_row_, n = static_cast<int64_t>(results.size());
  if (first + n > rows_) throw std::logic_error("ResultWriter: more rows than the input has");
  if (file_ < 0) throw std::logic_error("ResultWriter: append after a failure or finish");
  const std::string what = "writing rows " + std::to_string(first_input_row_ + first) + "-" +
                           std::to_string(first_input_row_ + first + n - 1);
  std::vector<float> latency;
  for (const auto& r : results) latency.push_back(r.latency_ms);

  std::vector<int64_t> offsets;
  std::vector<int32_t> tokens, top_ids;
  std::vector<float> logprobs, top_logprobs, emb;
  std::vector<double> sums;
  std::vector<uint8_t> reasons;
  std::vector<int32_t> counts;  // score: targets per row
  int64_t end = values_;
  for (const auto& r : results) {
    end += task_ == "generate" ? r.tokens.size() : r.token_logprobs.size();
    offsets.push_back(end);
    tokens.insert(tokens.end(), r.tokens.begin(), r.tokens.end());
    logprobs.insert(logprobs.end(), r.token_logprobs.begin(), r.token_logprobs.end());
    sums.push_back(r.sum_logprob);
    counts.push_back(static_cast<int32_t>(r.token_logprobs.size()));
    top_ids.insert(top_ids.end(), r.top_ids.begin(), r.top_ids.end());
    top_logprobs.insert(top_logprobs.end(), r.top_logprobs.begin(), r.top_logprobs.end());
    reasons.push_back(static_cast<uint8_t>(r.finish_reason));
    emb.insert(emb.end(), r.embedding.begin(), r.embedding.end());
  }
  try {
    int64_t need = kMetadataReserve + new_chunk_bytes(file_, "/latency_ms", first, n) +
                   new_chunk_bytes(file_, "/done", first, n);
    for (const RowTiming& t : row_timings(task_)) need += new_chunk_bytes(file_, t.name, first, n);
    if (task_ == "generate" || task_ == "score")
      need += new_chunk_bytes(file_, values_dataset(task_), values_, end - values_) +
              new_chunk_bytes(file_, offsets_dataset(task_), first + 1, n) +
              (task_ == "score" ? new_chunk_bytes(file_, "/scores/sum_logprob", first, n) +
                                      new_chunk_bytes(file_, "/scores/num_tokens", first, n)
                                : 0);
    else
      need += new_chunk_bytes(file_, "/embeddings", first, n);
    if (task_ == "generate") {
      for (const char* name : per_token_extras(top_k_)) need += new_chunk_bytes(file_, name, values_, end - values_);
      need += new_chunk_bytes(file_, "/generated/finish_reason", first, n);
    }
    const std::string reason = reserve(need);
    if (!reason.empty()) fail(what, reason);

    if (task_ == "generate")
      write_rows(file_, values_dataset(task_), H5T_NATIVE_INT32, values_, tokens.size(), 1, tokens.data());
    else if (task_ == "score")
      write_rows(file_, values_dataset(task_), H5T_NATIVE_FLOAT, values_, logprobs.size(), 1, logprobs.data());
    if (task_ == "generate" || task_ == "score")
      write_rows(file_, offsets_dataset(task_), H5T_NATIVE_INT64, first + 1, n, 1, offsets.data());
    if (task_ == "generate") {
      if (logprobs.size() != tokens.size() || top_ids.size() != tokens.size() * top_k_)
        throw std::logic_error("ResultWriter: log-probs not aligned with the generated tokens");
      write_rows(file_, "/generated/logprobs", H5T_NATIVE_FLOAT, values_, logprobs.size(), 1, logprobs.data());
      if (top_k_ > 0) {
        write_rows(file_, "/generated/top_ids", H5T_NATIVE_INT32, values_, tokens.size(), top_k_, top_ids.data());
        write_rows(file_, "/generated/top_logprobs", H5T_NATIVE_FLOAT, values_, tokens.size(), top_k_,
                   top_logprobs.data());
      }
      write_rows(file_, "/generated/finish_reason", H5T_NATIVE_UINT8, first, n, 1, reasons.data());
    }
    if (task_ == "score") {
      write_rows(file_, "/scores/sum_logprob", H5T_NATIVE_DOUBLE, first, n, 1, sums.data());
      write_rows(file_, "/scores/num_tokens", H5T_NATIVE_INT32, first, n, 1, counts.data());
    }
    if (task_ == "embed") write_rows(file_, "/embeddings", H5T_NATIVE_FLOAT, first, n, hidden_, emb.data());
    write_rows(file_, "/latency_ms", H5T_NATIVE_FLOAT, first, n, 1, latency.data());
    for (const RowTiming& t : row_timings(task_)) {
      std::vector<float> values;
      for (const auto& r : results) values.push_back(r.*t.value);
      write_rows(file_, t.name, H5T_NATIVE_FLOAT, first, n, 1, values.data());
    }
    h5(H5Fflush(file_, H5F_SCOPE_GLOBAL));  // the data is on disk before any of its rows is marked done

    std::vector<uint8_t> done(n, 1);
    write_rows(file_, "/done", H5T_NATIVE_UINT8, first, n, 1, done.data());
    h5(H5Fflush(file_, H5F_SCOPE_GLOBAL));
  } catch (const Hdf5Failure& e) {
    fail(what, e.what());
  }
  values_ = end;
  next_row_ += n;
  if (task_ == "score")
    for (double v : sums) sum_logprob_ += v;
}

void ResultWriter::finish(const std::string& report, const std::string& report_json, const std::string& plan_yaml) {
  if (file_ < 0) throw std::logic_error("ResultWriter: finish after a failure");
  const std::string what = "writing the run report";
  try {
    const std::string reason =
        reserve(kMetadataReserve + 2 * static_cast<int64_t>(report.size() + report_json.size() + plan_yaml.size()));
    if (!reason.empty()) fail(what, reason);
    write_string_attr(file_, "plan", plan_yaml);
    write_string_attr(file_, "run_report", report);
    write_string_attr(file_, "run_report_json", report_json);
    if (task_ == "score") {  // over the done rows
      const double mean_nll = values_ > 0 ? -sum_logprob_ / double(values_) : 0.0;
      write_i64_attr(file_, "scored_tokens", values_);
      write_f64_attr(file_, "mean_nll", mean_nll);
      write_f64_attr(file_, "perplexity", std::exp(mean_nll));
    }
    write_u8_attr(file_, "complete", next_row_ == rows_ ? 1 : 0);
    h5(H5Fflush(file_, H5F_SCOPE_GLOBAL));
    const hid_t file = file_;
    file_ = -1;
    h5(H5Fclose(file));
  } catch (const Hdf5Failure& e) {
    fail(what, e.what());
  }
}

}  // namespace lowsync
