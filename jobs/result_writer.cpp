#include "jobs/result_writer.h"

#include <hdf5.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <thread>

#include "io/error.h"

#ifndef LOWSYNC_VERSION
#define LOWSYNC_VERSION "dev"
#endif

namespace lowsync {

namespace {

const char* values_dataset(const std::string& task) {
  return task == "generate" ? "/generated/token_ids" : "/scores/token_logprobs";
}
const char* offsets_dataset(const std::string& task) {
  return task == "generate" ? "/generated/offsets" : "/scores/offsets";
}

hid_t create_dataset(hid_t file, const char* name, hid_t type, std::vector<hsize_t> dims,
                     std::vector<hsize_t> max_dims, std::vector<hsize_t> chunk) {
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data());
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t ds = H5Dcreate2(file, name, type, space, lcpl, dcpl, H5P_DEFAULT);
  H5Pclose(lcpl);
  H5Pclose(dcpl);
  H5Sclose(space);
  if (ds < 0) throw UserError(std::string("cannot create dataset ") + name);
  H5Dclose(ds);
  return 0;
}

void write_string_attr(hid_t file, const char* name, const std::string& value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, std::max<size_t>(value.size(), 1));
  hid_t space = H5Screate(H5S_SCALAR);
  if (H5Aexists(file, name) > 0) H5Adelete(file, name);
  hid_t attr = H5Acreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, type, value.c_str());
  H5Aclose(attr);
  H5Sclose(space);
  H5Tclose(type);
}

std::string read_string_attr(hid_t file, const char* name) {
  if (H5Aexists(file, name) <= 0) return "";
  hid_t attr = H5Aopen(file, name, H5P_DEFAULT);
  hid_t type = H5Aget_type(attr);
  std::string value(H5Tget_size(type), '\0');
  hid_t mem = H5Tcopy(H5T_C_S1);
  H5Tset_size(mem, value.size());
  H5Aread(attr, mem, value.data());
  H5Tclose(mem);
  H5Tclose(type);
  H5Aclose(attr);
  value.resize(std::strlen(value.c_str()));
  return value;
}

void write_u8_attr(hid_t file, const char* name, uint8_t v) {
  hid_t space = H5Screate(H5S_SCALAR);
  if (H5Aexists(file, name) > 0) H5Adelete(file, name);
  hid_t attr = H5Acreate2(file, name, H5T_NATIVE_UINT8, space, H5P_DEFAULT, H5P_DEFAULT);
  H5Awrite(attr, H5T_NATIVE_UINT8, &v);
  H5Aclose(attr);
  H5Sclose(space);
}

// Writes `count` rows (of `row_len` elements) at row `first` of a dataset, growing it if needed.
void write_rows(hid_t file, const char* name, hid_t type, int64_t first, int64_t count, int64_t row_len,
                const void* data) {
  if (count == 0) return;
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  hid_t space = H5Dget_space(ds);
  const int rank = H5Sget_simple_extent_ndims(space);
  hsize_t dims[2];
  H5Sget_simple_extent_dims(space, dims, nullptr);
  if (dims[0] < hsize_t(first + count)) {
    dims[0] = first + count;
    H5Dset_extent(ds, dims);
    H5Sclose(space);
    space = H5Dget_space(ds);
  }
  hsize_t start[2] = {hsize_t(first), 0}, cnt[2] = {hsize_t(count), hsize_t(row_len)};
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, cnt, nullptr);
  hid_t mem = H5Screate_simple(rank, cnt, nullptr);
  herr_t err = H5Dwrite(ds, type, mem, space, H5P_DEFAULT, data);
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  if (err < 0) throw UserError(std::string("cannot write dataset ") + name);
}

template <class T>
std::vector<T> read_all(hid_t file, const char* name, hid_t type) {
  hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
  if (ds < 0) return {};
  hid_t space = H5Dget_space(ds);
  std::vector<T> out(H5Sget_simple_extent_npoints(space));
  if (!out.empty()) H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
  H5Sclose(space);
  H5Dclose(ds);
  return out;
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

ResultWriter::ResultWriter(const JobConfig& job, const ModelConfig& model, int64_t rows, bool resume)
    : path_(job.output), task_(job.task), rows_(rows), hidden_(model.hidden) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const bool exists = std::filesystem::exists(path_);
  if (resume && exists) {
    // A rank of the interrupted run may still be exiting with the file open (HDF5 locks it): give
    // it a few seconds before calling the file unreadable.
    file_ = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    for (int wait = 0; file_ < 0 && wait < 20; ++wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      file_ = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    }
    if (file_ < 0)
      throw UserError(path_ + ": cannot re-open the output for --resume (not a readable HDF5 file, or another "
                      "process still has it open)");
    if (read_string_attr(file_, "job_fingerprint") != job.fingerprint())
      throw UserError(path_ + ": --resume refused: the file was written by a different job (model, task, input or "
                      "generate/embed options differ; see its 'job_yaml' attribute)");
    if (read_string_attr(file_, "model_fingerprint") != model_fingerprint(model))
      throw UserError(path_ + ": --resume refused: the model in " + model.dir + " differs from the one that wrote it");
    auto done = read_all<uint8_t>(file_, "/done", H5T_NATIVE_UINT8);
    if (int64_t(done.size()) != rows)
      throw UserError(path_ + ": --resume refused: the file has " + std::to_string(done.size()) +
                      " rows but the input has " + std::to_string(rows));
    while (next_row_ < rows && done[next_row_]) ++next_row_;
    if (task_ == "generate" || task_ == "score") {
      // Data past the last done row belongs to an interrupted batch: drop it.
      auto offsets = read_all<int64_t>(file_, offsets_dataset(task_), H5T_NATIVE_INT64);
      values_ = offsets[next_row_];
      hid_t ds = H5Dopen2(file_, values_dataset(task_), H5P_DEFAULT);
      hsize_t dims[1] = {hsize_t(values_)};
      H5Dset_extent(ds, dims);
      H5Dclose(ds);
    }
    write_u8_attr(file_, "complete", 0);
    H5Fflush(file_, H5F_SCOPE_GLOBAL);
    return;
  }
  if (exists)
    throw UserError(path_ + ": the output file exists; pass --resume to continue it, or choose another output");
  file_ = H5Fcreate(path_.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
  if (file_ < 0) throw UserError(path_ + ": cannot create the output file (is the folder there and writable?)");

  const hsize_t N = rows, unlimited = H5S_UNLIMITED;
  if (task_ == "generate" || task_ == "score") {
    hid_t vtype = task_ == "generate" ? H5T_NATIVE_INT32 : H5T_NATIVE_FLOAT;
    create_dataset(file_, values_dataset(task_), vtype, {0}, {unlimited}, {4096});
    create_dataset(file_, offsets_dataset(task_), H5T_NATIVE_INT64, {N + 1}, {N + 1}, {std::min<hsize_t>(N + 1, 4096)});
    if (task_ == "score")
      create_dataset(file_, "/scores/sum_logprob", H5T_NATIVE_DOUBLE, {N}, {N}, {std::max<hsize_t>(1, std::min<hsize_t>(N, 4096))});
  } else {
    const hsize_t H = hidden_;
    create_dataset(file_, "/embeddings", H5T_NATIVE_FLOAT, {N, H}, {N, H}, {std::max<hsize_t>(1, std::min<hsize_t>(N, 64)), H});
  }
  const hsize_t chunk = std::max<hsize_t>(1, std::min<hsize_t>(N, 4096));
  create_dataset(file_, "/latency_ms", H5T_NATIVE_FLOAT, {N}, {N}, {chunk});
  create_dataset(file_, "/done", H5T_NATIVE_UINT8, {N}, {N}, {chunk});
  write_string_attr(file_, "job_yaml", job.to_yaml());
  write_string_attr(file_, "job_fingerprint", job.fingerprint());
  write_string_attr(file_, "model", model.dir);
  write_string_attr(file_, "model_architecture", model.architecture);
  write_string_attr(file_, "model_fingerprint", model_fingerprint(model));
  write_string_attr(file_, "lowsync_version", LOWSYNC_VERSION);
  write_string_attr(file_, "task", task_);
  write_u8_attr(file_, "complete", 0);
  H5Fflush(file_, H5F_SCOPE_GLOBAL);
}

ResultWriter::~ResultWriter() {
  if (file_ >= 0) H5Fclose(file_);
}

void ResultWriter::append(const std::vector<RowResult>& results) {
  const int64_t first = next_row_, n = static_cast<int64_t>(results.size());
  if (first + n > rows_) throw std::logic_error("ResultWriter: more rows than the input has");
  std::vector<float> latency;
  for (const auto& r : results) latency.push_back(r.latency_ms);

  if (task_ == "generate" || task_ == "score") {
    std::vector<int64_t> offsets;
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<double> sums;
    int64_t end = values_;
    for (const auto& r : results) {
      end += task_ == "generate" ? r.tokens.size() : r.token_logprobs.size();
      offsets.push_back(end);
      tokens.insert(tokens.end(), r.tokens.begin(), r.tokens.end());
      logprobs.insert(logprobs.end(), r.token_logprobs.begin(), r.token_logprobs.end());
      sums.push_back(r.sum_logprob);
    }
    if (task_ == "generate")
      write_rows(file_, values_dataset(task_), H5T_NATIVE_INT32, values_, tokens.size(), 1, tokens.data());
    else
      write_rows(file_, values_dataset(task_), H5T_NATIVE_FLOAT, values_, logprobs.size(), 1, logprobs.data());
    write_rows(file_, offsets_dataset(task_), H5T_NATIVE_INT64, first + 1, n, 1, offsets.data());
    if (task_ == "score") write_rows(file_, "/scores/sum_logprob", H5T_NATIVE_DOUBLE, first, n, 1, sums.data());
    values_ = end;
  } else {
    std::vector<float> emb;
    for (const auto& r : results) emb.insert(emb.end(), r.embedding.begin(), r.embedding.end());
    write_rows(file_, "/embeddings", H5T_NATIVE_FLOAT, first, n, hidden_, emb.data());
  }
  write_rows(file_, "/latency_ms", H5T_NATIVE_FLOAT, first, n, 1, latency.data());
  H5Fflush(file_, H5F_SCOPE_GLOBAL);  // the data is on disk before any of its rows is marked done

  std::vector<uint8_t> done(n, 1);
  write_rows(file_, "/done", H5T_NATIVE_UINT8, first, n, 1, done.data());
  H5Fflush(file_, H5F_SCOPE_GLOBAL);
  next_row_ += n;
}

void ResultWriter::finish(const std::string& report, const std::string& report_json) {
  write_string_attr(file_, "run_report", report);
  write_string_attr(file_, "run_report_json", report_json);
  write_u8_attr(file_, "complete", 1);
  H5Fflush(file_, H5F_SCOPE_GLOBAL);
}

}  // namespace lowsync
