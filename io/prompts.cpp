#include "io/prompts.h"

#include <hdf5.h>

#include <algorithm>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

namespace {

// HDF5 prints its own error stack by default; lowsync reports one line of its own instead.
struct QuietHdf5 {
  QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

// Declared sizes beyond this many bytes per stored byte are refused: gzip, HDF5's strongest
// standard filter, stops near 1000:1, so a larger ratio is a dataset whose extent was declared but
// never backed by data (or a crafted one) and reading it would only produce fill values.
constexpr double kMaxCompression = 1024;

// The dtype as users know it: "int32", "float64", "bool" (h5py's enum), "string", ...
std::string describe_type(hid_t type) {
  const std::string bits = std::to_string(H5Tget_size(type) * 8);
  switch (H5Tget_class(type)) {
    case H5T_INTEGER: return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + bits;
    case H5T_FLOAT: return "float" + bits;
    case H5T_ENUM: {
      char* first = H5Tget_nmembers(type) == 2 ? H5Tget_member_name(type, 0) : nullptr;
      const bool is_bool = first && std::string(first) == "FALSE";
      if (first) H5free_memory(first);
      return is_bool ? "bool" : "enum";
    }
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ARRAY: return "array";
    case H5T_VLEN: return "variable-length";
    default: return "a non-numeric type";
  }
}

// "" when every element of a 1-D dataset of n elements has storage, else what is missing. The
// storage status alone cannot tell: compressed chunks are smaller than their extent, so a fully
// written gzip dataset reads as "partly allocated". Chunks are counted instead.
std::string unwritten_part(hid_t ds, int64_t n) {
  if (n == 0) return "";
  const hid_t plist = H5Dget_create_plist(ds);
  const H5D_layout_t layout = H5Pget_layout(plist);
  hsize_t chunk = 0;
  if (layout == H5D_CHUNKED) H5Pget_chunk(plist, 1, &chunk);
  H5Pclose(plist);
  if (layout == H5D_CONTIGUOUS) {
    H5D_space_status_t status = H5D_SPACE_STATUS_ERROR;
    H5Dget_space_status(ds, &status);
    return status == H5D_SPACE_STATUS_ALLOCATED ? "" : "none of them were written";
  }
  if (layout == H5D_CHUNKED && chunk > 0) {
    const hsize_t expected = (static_cast<hsize_t>(n) + chunk - 1) / chunk;
    hsize_t written = 0;
    const hid_t space = H5Dget_space(ds);  // HDF5 1.10 does not take H5S_ALL here
    const herr_t err = H5Dget_num_chunks(ds, space, &written);
    H5Sclose(space);
    if (err < 0 || written < expected)
      return "only " + std::to_string(written) + " of its " + std::to_string(expected) + " chunks were written";
  }
  return "";  // compact: stored in the header, always whole
}

// "" when HDF5 can decode every filter of the dataset's pipeline, else the first it cannot, e.g.
// "lzf (filter 32000)": h5py's own LZF is not part of the HDF5 library, and reading would fail with
// no more than "cannot read".
std::string missing_filter(hid_t ds) {
  const hid_t plist = H5Dget_create_plist(ds);
  std::string missing;
  const int n = H5Pget_nfilters(plist);
  for (int i = 0; i < n && missing.empty(); ++i) {
    unsigned flags = 0;
    size_t n_values = 0;
    char name[80] = {};
    const H5Z_filter_t id = H5Pget_filter2(plist, static_cast<unsigned>(i), &flags, &n_values, nullptr, sizeof name,
                                           name, nullptr);
    if (id < 0 || H5Zfilter_avail(id) > 0) continue;
    missing = (name[0] ? std::string(name) + " " : std::string()) + "(filter " + std::to_string(id) + ")";
  }
  H5Pclose(plist);
  return missing;
}

// One of the CSR datasets, checked before any value is read: it exists, is one-dimensional, has an
// integer dtype (a float or bool would be converted silently), and every element was written (a
// huge extent declared in a tiny file would otherwise be read as fill values, on every rank).
// Returns its length.
int64_t integer_dataset(hid_t file, const std::string& path, const std::string& name) {
  if (H5Lexists(file, name.c_str(), H5P_DEFAULT) <= 0) throw UserError(path + ": missing dataset '" + name + "'");
  const hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  if (ds < 0) throw UserError(path + ": '" + name + "' is not a dataset");
  const hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
  const int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[H5S_MAX_RANK] = {};
  if (rank > 0) H5Sget_simple_extent_dims(space, dims, nullptr);
  const bool integer = H5Tget_class(type) == H5T_INTEGER;
  const std::string dtype = describe_type(type);
  const double logical = double(dims[0]) * double(H5Tget_size(type)), stored = double(H5Dget_storage_size(ds));
  const std::string unwritten = unwritten_part(ds, static_cast<int64_t>(dims[0]));
  const std::string filter = missing_filter(ds);
  H5Tclose(type);
  H5Sclose(space);
  H5Dclose(ds);
  if (rank != 1) throw UserError(path + ": dataset '" + name + "' must be one-dimensional");
  if (!integer)
    throw UserError(path + ": dataset '" + name + "' has dtype " + dtype + "; expected an integer type (int32 " +
                    (name.find("offsets") != std::string::npos ? "or int64 offsets" : "token ids") + ")");
  if (!filter.empty())
    throw UserError(path + ": dataset '" + name + "' is compressed with " + filter +
                    ", which this HDF5 library cannot decode; expected gzip, shuffle or no compression");
  const int64_t n = static_cast<int64_t>(dims[0]);
  if (rank == 1 && !unwritten.empty())
    throw UserError(path + ": dataset '" + name + "' declares " + std::to_string(n) + " entries but " + unwritten +
                    " (they would read as the fill value); expected a fully written dataset");
  if (logical > 1e6 && stored * kMaxCompression < logical)
    throw UserError(path + ": dataset '" + name + "' declares " + std::to_string(n) + " entries (" +
                    std::to_string(int64_t(logical)) + " bytes) but stores " + std::to_string(int64_t(stored)) +
                    "; refusing an absurd size (more than 1024:1 compression)");
  return n;
}

// Reads elements [begin, end) converted to T (int32 or int64). The dtype was checked to be an
// integer type, so the conversion is exact for values in T's range.
template <class T>
std::vector<T> read_range(hid_t file, const std::string& path, const std::string& name, int64_t begin, int64_t end) {
  std::vector<T> out(end - begin);
  if (out.empty()) return out;
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  hid_t space = H5Dget_space(ds);
  hsize_t start = begin, count = end - begin;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  hid_t mem = H5Screate_simple(1, &count, nullptr);
  hid_t type = std::is_same_v<T, int64_t> ? H5T_NATIVE_INT64 : H5T_NATIVE_INT32;
  herr_t err = H5Dread(ds, type, mem, space, H5P_DEFAULT, out.data());
  const hid_t file_type = H5Dget_type(ds);
  const std::string dtype = describe_type(file_type);
  H5Tclose(file_type);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  if (err < 0)
    throw UserError(path + ": cannot read dataset '" + name + "' (dtype " + dtype + ") elements " + std::to_string(begin) +
                    " to " + std::to_string(end) + " as " + (std::is_same_v<T, int64_t> ? "int64" : "int32"));
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
    // As int64: an int64 or uint32 id past int32's range is shown as stored, not saturated by HDF5.
    auto ids = read_range<int64_t>(file, path, name, begin, end);
    for (int64_t i = 0; i < end - begin; ++i) {
      if (ids[i] >= 0 && ids[i] < vocab) continue;
      const int64_t pos = begin + i;
      const int64_t row = std::upper_bound(off.begin(), off.end(), pos) - off.begin() - 1;
      throw UserError(path + ": row " + std::to_string(row) + ": " + name + " holds token id " +
                      std::to_string(ids[i]) + "; expected 0 <= id < vocab size " + std::to_string(vocab));
    }
  }
}

// /ids, when present: one-dimensional, one entry per prompt, integers or strings (h5py's
// string_dtype(), or fixed-length strings), fully written. Returns its kind.
RowIds::Kind check_row_ids(hid_t file, const std::string& path, int64_t rows) {
  if (H5Lexists(file, "ids", H5P_DEFAULT) <= 0) return RowIds::Kind::none;
  const hid_t ds = H5Dopen2(file, "ids", H5P_DEFAULT);
  if (ds < 0) throw UserError(path + ": 'ids' is not a dataset");
  const hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
  const int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[H5S_MAX_RANK] = {};
  if (rank > 0) H5Sget_simple_extent_dims(space, dims, nullptr);
  const H5T_class_t cls = H5Tget_class(type);
  const std::string dtype = describe_type(type);
  const std::string unwritten = rank == 1 ? unwritten_part(ds, static_cast<int64_t>(dims[0])) : "";
  const std::string filter = missing_filter(ds);
  H5Tclose(type);
  H5Sclose(space);
  H5Dclose(ds);
  if (rank != 1) throw UserError(path + ": dataset 'ids' must be one-dimensional (one id per prompt)");
  if (cls != H5T_INTEGER && cls != H5T_STRING)
    throw UserError(path + ": dataset 'ids' has dtype " + dtype + "; expected integers or strings (one id per prompt)");
  if (static_cast<int64_t>(dims[0]) != rows)
    throw UserError(path + ": dataset 'ids' has " + std::to_string(dims[0]) + " entries but the file has " +
                    std::to_string(rows) + " prompts; expected one id per prompt");
  if (!filter.empty())
    throw UserError(path + ": dataset 'ids' is compressed with " + filter +
                    ", which this HDF5 library cannot decode; expected gzip, shuffle or no compression");
  if (!unwritten.empty())
    throw UserError(path + ": dataset 'ids' declares " + std::to_string(rows) + " entries but " + unwritten +
                    "; expected a fully written dataset");
  return cls == H5T_INTEGER ? RowIds::Kind::integer : RowIds::Kind::text;
}

}  // namespace

PromptReader::PromptReader(const std::string& path, int vocab, bool need_targets, int samples)
    : path_(path), samples_(std::max(samples, 1)) {
  static QuietHdf5 quiet;
  require_regular_file(path, "the job's input prompts");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw UserError(path + ": not found or not an HDF5 file (the job's input)");
  file_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (file_ < 0) throw UserError(path + ": cannot open the input file");
  // Sizes and dtypes of every dataset first, then offsets (small), then token ids (streamed).
  const int64_t n_tokens = integer_dataset(file_, path, "input_ids");
  const int64_t n_offsets = integer_dataset(file_, path, "offsets");
  // Every prompt needs a token, so N+1 offsets for T tokens means N <= T; this also bounds the
  // offsets held in memory by the ids actually stored.
  if (n_offsets < 1 || n_offsets - 1 > n_tokens)
    throw UserError(path + ": dataset 'offsets' has " + std::to_string(n_offsets) + " entries for " +
                    std::to_string(n_tokens) + " tokens in 'input_ids'; expected N+1 entries for N prompts, N <= " +
                    std::to_string(n_tokens));
  int64_t n_targets = 0;
  if (need_targets) {
    n_targets = integer_dataset(file_, path, "targets");
    const int64_t n_toff = integer_dataset(file_, path, "target_offsets");
    if (n_toff != n_offsets)
      throw UserError(path + ": 'target_offsets' has " + std::to_string(n_toff) + " entries but 'offsets' has " +
                      std::to_string(n_offsets) + "; expected one target row per prompt");
  }
  offsets_ = read_range<int64_t>(file_, path, "offsets", 0, n_offsets);
  check_offsets(offsets_, n_tokens, path, "offsets", "input_ids");
  if (need_targets) {
    target_offsets_ = read_range<int64_t>(file_, path, "target_offsets", 0, n_offsets);
    check_offsets(target_offsets_, n_targets, path, "target_offsets", "targets");
  }
  check_ids(file_, path, "input_ids", offsets_, vocab);
  if (need_targets) check_ids(file_, path, "targets", target_offsets_, vocab);

  // Stop sequences (make_prompts.py --stop): a row of generate stops when its new tokens end with one.
  const bool has_stops = H5Lexists(file_, "stop_ids", H5P_DEFAULT) > 0;
  if (has_stops || H5Lexists(file_, "stop_offsets", H5P_DEFAULT) > 0) {
    const int64_t n_ids = integer_dataset(file_, path, "stop_ids");
    const int64_t n_off = integer_dataset(file_, path, "stop_offsets");
    if (n_off < 1 || n_off - 1 > n_ids)
      throw UserError(path + ": dataset 'stop_offsets' has " + std::to_string(n_off) + " entries for " +
                      std::to_string(n_ids) + " tokens in 'stop_ids'; expected S+1 entries for S non-empty stop sequences");
    const auto off = read_range<int64_t>(file_, path, "stop_offsets", 0, n_off);
    check_offsets(off, n_ids, path, "stop_offsets", "stop_ids");
    check_ids(file_, path, "stop_ids", off, vocab);
    for (int64_t s = 0; s + 1 < n_off; ++s) {
      if (off[s + 1] == off[s])
        throw UserError(path + ": stop sequence " + std::to_string(s) + " (stop_offsets) is empty; expected at least one token");
      stop_sequences_.push_back(read_range<int32_t>(file_, path, "stop_ids", off[s], off[s + 1]));
    }
  }
  ids_kind_ = check_row_ids(file_, path, prompts());
  if (ids_kind_ == RowIds::Kind::integer) {
    const hid_t ds = H5Dopen2(file_, "ids", H5P_DEFAULT);
    ids_type_ = H5Dget_type(ds);  // the output's /ids gets the same dtype
    H5Dclose(ds);
  }
}

PromptReader::~PromptReader() {
  if (ids_type_ >= 0) H5Tclose(ids_type_);
  if (file_ >= 0) H5Fclose(file_);
}

RowIds PromptReader::ids(int64_t first, int64_t count) const {
  if (samples_ == 1 || count == 0) return prompt_ids(first, count);
  // Each prompt's id once per sample.
  const int64_t p0 = prompt_of(first), p1 = prompt_of(first + count - 1) + 1;
  const RowIds per_prompt = prompt_ids(p0, p1 - p0);
  RowIds out;
  out.kind = per_prompt.kind;
  out.file_type = per_prompt.file_type;
  for (int64_t r = first; r < first + count; ++r) {
    if (out.kind == RowIds::Kind::integer) out.integers.push_back(per_prompt.integers[prompt_of(r) - p0]);
    if (out.kind == RowIds::Kind::text) out.texts.push_back(per_prompt.texts[prompt_of(r) - p0]);
  }
  return out;
}

RowIds PromptReader::prompt_ids(int64_t first, int64_t count) const {
  RowIds out;
  out.kind = ids_kind_;
  if (ids_kind_ == RowIds::Kind::none) return out;
  if (ids_kind_ == RowIds::Kind::integer) {
    out.integers = read_range<int64_t>(file_, path_, "ids", first, first + count);
    out.file_type = ids_type_;
    return out;
  }
  // Strings, variable-length (h5py's string_dtype()) or fixed-length, read as variable-length C
  // strings (HDF5 converts fixed-length ones).
  out.texts.resize(count);
  if (count == 0) return out;
  const hid_t ds = H5Dopen2(file_, "ids", H5P_DEFAULT);
  const hid_t space = H5Dget_space(ds);
  hsize_t start = first, n = count;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, nullptr, &n, nullptr);
  const hid_t mem = H5Screate_simple(1, &n, nullptr);
  const hid_t file_type = H5Dget_type(ds);
  const hid_t str = H5Tcopy(H5T_C_S1);
  H5Tset_size(str, H5T_VARIABLE);
  H5Tset_cset(str, H5Tget_cset(file_type));
  std::vector<char*> raw(count, nullptr);
  const herr_t err = H5Dread(ds, str, mem, space, H5P_DEFAULT, raw.data());
  for (int64_t i = 0; i < count && err >= 0; ++i) out.texts[i] = raw[i] ? raw[i] : "";
  if (err >= 0) H5Dvlen_reclaim(str, mem, H5P_DEFAULT, raw.data());
  H5Tclose(str);
  H5Tclose(file_type);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  if (err < 0)
    throw UserError(path_ + ": cannot read dataset 'ids' entries " + std::to_string(first) + " to " +
                    std::to_string(first + count) + " as strings");
  return out;
}

std::vector<int32_t> PromptReader::tokens(int64_t row) const {
  const int64_t p = prompt_of(row);
  return read_range<int32_t>(file_, path_, "input_ids", offsets_[p], offsets_[p + 1]);
}

std::vector<int32_t> PromptReader::targets(int64_t row) const {
  const int64_t p = prompt_of(row);
  return read_range<int32_t>(file_, path_, "targets", target_offsets_[p], target_offsets_[p + 1]);
}

}  // namespace lowsync
