#include "io/job_config.h"

#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <algorithm>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

namespace {

// One row per key: how to read it from a scalar node into the config.
using Setter = std::function<void(JobConfig&, const YAML::Node&)>;

template <class T>
Setter field(T JobConfig::*member) {
  return [member](JobConfig& c, const YAML::Node& n) { c.*member = n.as<T>(); };
}
template <class S, class T>
Setter field(S JobConfig::*group, T S::*member) {
  return [group, member](JobConfig& c, const YAML::Node& n) { (c.*group).*member = n.as<T>(); };
}
// An integer key that also takes `auto`, stored as 0 (a number below 1 as -1, which the checks refuse).
int int_or_auto(const YAML::Node& n) {
  if (n.IsScalar() && n.Scalar() == "auto") return 0;
  const int v = n.as<int>();
  return v < 1 ? -1 : v;
}

template <class T>
Setter spd_field(T SpdOptions::*member) {
  return [member](JobConfig& c, const YAML::Node& n) { c.parallel.spd.*member = n.as<T>(); };
}

template <typename T>
Setter decoupled_field(T DecoupledOptions::*member) {
  return [member](JobConfig& c, const YAML::Node& n) { c.parallel.decoupled.*member = n.as<T>(); };
}

// "2GiB", "500 MB", "123456789" (bytes), or "50%" / "0.5" (a share of the free memory).
MemoryLimit parse_memory_limit(const std::string& text) {
  MemoryLimit m;
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    throw YAML::Exception(YAML::Mark::null_mark(), "not a memory size");
  }
  std::string unit = text.substr(used);
  unit.erase(0, unit.find_first_not_of(' '));
  if (!(value > 0) || !std::isfinite(value)) throw YAML::Exception(YAML::Mark::null_mark(), "not a memory size");
  if (unit == "%") {
    m.fraction = value / 100;
  } else if (unit.empty() && value <= 1 && text.find('.') != std::string::npos) {
    m.fraction = value;
  } else {
    static const std::map<std::string, double> units = {
        {"", 1}, {"B", 1}, {"K", 1e3}, {"KB", 1e3}, {"KiB", 1024.0}, {"M", 1e6}, {"MB", 1e6}, {"MiB", 1048576.0},
        {"G", 1e9}, {"GB", 1e9}, {"GiB", 1073741824.0}, {"T", 1e12}, {"TB", 1e12}, {"TiB", 1099511627776.0}};
    const auto u = units.find(unit);
    if (u == units.end()) throw YAML::Exception(YAML::Mark::null_mark(), "not a memory size");
    m.bytes = static_cast<int64_t>(value * u->second);
  }
  if (m.fraction > 1) throw YAML::Exception(YAML::Mark::null_mark(), "not a memory size");
  return m;
}

const std::map<std::string, Setter>& schema() {
  static const std::map<std::string, Setter> keys = {
      {"model", field(&JobConfig::model)},
      {"task", field(&JobConfig::task)},
      {"input", field(&JobConfig::input)},
      {"output", field(&JobConfig::output)},
      {"threads", [](JobConfig& c, const YAML::Node& n) { c.threads = int_or_auto(n); }},
      {"backend", field(&JobConfig::backend)},
      {"trace", field(&JobConfig::trace)},
      {"mpi.timeout", field(&JobConfig::mpi_timeout)},
      {"memory.limit",
       [](JobConfig& c, const YAML::Node& n) {
         if (!n.IsSequence()) return void(c.memory_limit = parse_memory_limit(n.as<std::string>()));
         c.memory_limits.clear();
         for (const YAML::Node& each : n) c.memory_limits.push_back(parse_memory_limit(each.as<std::string>()));
         if (c.memory_limits.empty()) throw YAML::Exception(YAML::Mark::null_mark(), "an empty list");
       }},
      {"memory.pool",
       [](JobConfig& c, const YAML::Node& n) {
         if (!parse_memory_pool(n.as<std::string>(), c.memory_pool))
           throw YAML::Exception(YAML::Mark::null_mark(), "not a memory pool");
       }},
      {"cuda.device", field(&JobConfig::cuda, &CudaOptions::device)},
      {"cuda.dtype", field(&JobConfig::cuda, &CudaOptions::dtype)},
      {"weights.dtype",
       [](JobConfig& c, const YAML::Node& n) {
         if (!parse_weights_dtype(n.as<std::string>(), c.weights_dtype))
           throw YAML::Exception(YAML::Mark::null_mark(), "not a weights dtype");
       }},
      {"weights.bf16_dot", field(&JobConfig::weights_bf16_dot)},
      {"weights.q8_dot", field(&JobConfig::weights_q8_dot)},
      {"generate.max_new_tokens", field(&JobConfig::generate, &GenerateOptions::max_new_tokens)},
      {"generate.temperature", field(&JobConfig::generate, &GenerateOptions::temperature)},
      {"generate.top_k", field(&JobConfig::generate, &GenerateOptions::top_k)},
      {"generate.top_p", field(&JobConfig::generate, &GenerateOptions::top_p)},
      {"generate.seed", field(&JobConfig::generate, &GenerateOptions::seed)},
      {"generate.stop_at_eos", field(&JobConfig::generate, &GenerateOptions::stop_at_eos)},
      {"generate.stop_token_ids",
       [](JobConfig& c, const YAML::Node& n) {
         c.generate.stop_token_ids = n.as<std::vector<int>>();
         c.generate.has_stop_token_ids = true;
       }},
      {"generate.min_new_tokens", field(&JobConfig::generate, &GenerateOptions::min_new_tokens)},
      {"generate.n", field(&JobConfig::generate, &GenerateOptions::n)},
      {"generate.repetition_penalty", field(&JobConfig::generate, &GenerateOptions::repetition_penalty)},
      {"generate.presence_penalty", field(&JobConfig::generate, &GenerateOptions::presence_penalty)},
      {"generate.frequency_penalty", field(&JobConfig::generate, &GenerateOptions::frequency_penalty)},
      {"generate.min_p", field(&JobConfig::generate, &GenerateOptions::min_p)},
      {"generate.logprobs", field(&JobConfig::generate, &GenerateOptions::logprobs)},
      {"score.window", field(&JobConfig::score, &ScoreOptions::window)},
      {"score.stride", field(&JobConfig::score, &ScoreOptions::stride)},
      {"embed.pooling", field(&JobConfig::embed, &EmbedOptions::pooling)},
      {"embed.normalize", field(&JobConfig::embed, &EmbedOptions::normalize)},
      {"batch.max_tokens", field(&JobConfig::batch, &BatchOptions::max_tokens)},
      {"batch.max_sequences", field(&JobConfig::batch, &BatchOptions::max_sequences)},
      {"batch.continuous", field(&JobConfig::batch, &BatchOptions::continuous)},
      {"parallel.tp", field(&JobConfig::parallel, &ParallelOptions::tp)},
      {"parallel.dp", [](JobConfig& c, const YAML::Node& n) { c.parallel.dp = int_or_auto(n); }},
      {"parallel.bp", field(&JobConfig::parallel, &ParallelOptions::bp)},
      {"parallel.speeds", field(&JobConfig::parallel, &ParallelOptions::speeds)},
      {"parallel.pp", field(&JobConfig::parallel, &ParallelOptions::pp)},
      {"parallel.stages", field(&JobConfig::parallel, &ParallelOptions::stages)},
      {"parallel.micro_batches", [](JobConfig& c, const YAML::Node& n) { c.parallel.micro_batches = int_or_auto(n); }},
      {"parallel.plan", field(&JobConfig::parallel, &ParallelOptions::plan)},
      {"parallel.sync_dtype",
       [](JobConfig& c, const YAML::Node& n) {
         if (!parse_sync_dtype(n.as<std::string>(), c.parallel.sync_dtype))
           throw YAML::Exception(YAML::Mark::null_mark(), "not a sync dtype");
       }},
      {"parallel.sync_wait",
       [](JobConfig& c, const YAML::Node& n) {
         if (!parse_sync_wait(n.as<std::string>(), c.parallel.sync_wait))
           throw YAML::Exception(YAML::Mark::null_mark(), "not spin, sleep or auto");
       }},
      {"parallel.split_head",
       [](JobConfig& c, const YAML::Node& n) {
         const std::string v = n.as<std::string>();
         if (v == "true") c.parallel.split_head = SplitHead::On;
         else if (v == "false") c.parallel.split_head = SplitHead::Off;
         else if (v == "auto") c.parallel.split_head = SplitHead::Auto;
         else throw YAML::Exception(YAML::Mark::null_mark(), "not true, false or auto");
       }},
      {"parallel.auto", field(&JobConfig::parallel, &ParallelOptions::auto_plan)},
      {"plan.objective", field(&JobConfig::plan, &PlanOptions::objective)},
      {"plan.profile", field(&JobConfig::plan, &PlanOptions::profile)},
      {"plan.output", field(&JobConfig::plan, &PlanOptions::output)},
      {"plan.runtime", field(&JobConfig::plan, &PlanOptions::runtime)},
      {"parallel.spd.drop", spd_field(&SpdOptions::drop)},
      {"parallel.spd.from", spd_field(&SpdOptions::from)},
      {"parallel.spd.budget.max_kl", spd_field(&SpdOptions::max_kl)},
      {"parallel.spd.budget.min_top1", spd_field(&SpdOptions::min_top1)},
      {"parallel.decoupled.from", decoupled_field(&DecoupledOptions::from)},
      {"parallel.decoupled.budget.min_cosine", decoupled_field(&DecoupledOptions::min_cosine)},
      {"parallel.decoupled.budget.max_kl", decoupled_field(&DecoupledOptions::max_kl)},
      {"rows.first", field(&JobConfig::rows, &RowsOptions::first)},
      {"rows.count", field(&JobConfig::rows, &RowsOptions::count)},
      {"shard.index", field(&JobConfig::shard, &ShardOptions::index)},
      {"shard.count", field(&JobConfig::shard, &ShardOptions::count)},
      {"calibrate.prompts", field(&JobConfig::calibrate, &CalibrateOptions::prompts)},
      {"calibrate.rows", field(&JobConfig::calibrate, &CalibrateOptions::rows)},
      {"calibrate.max_kl", field(&JobConfig::calibrate, &CalibrateOptions::max_kl)},
      {"calibrate.min_top1", field(&JobConfig::calibrate, &CalibrateOptions::min_top1)},
      {"calibrate.output", field(&JobConfig::calibrate, &CalibrateOptions::output)},
      {"calibrate.method",
       [](JobConfig& c, const YAML::Node& n) {
         const std::string m = n.as<std::string>();
         if (m != "kl" && m != "progressive") throw YAML::Exception(YAML::Mark::null_mark(), "not a method");
         c.calibrate.method = m == "kl" ? CalibrateMethod::Kl : CalibrateMethod::Progressive;
       }},
      {"calibrate.sensitive", field(&JobConfig::calibrate, &CalibrateOptions::sensitive)},
      {"calibrate.extreme", field(&JobConfig::calibrate, &CalibrateOptions::extreme)},
      {"progress.every", field(&JobConfig::progress, &ProgressOptions::every)},
      {"debug.dump", field(&JobConfig::debug, &DebugOptions::dump)},
      {"debug.dump_file", field(&JobConfig::debug, &DebugOptions::dump_file)},
  };
  return keys;
}

// Keys whose value may be one value or a list (memory.limit: every rank's, or one per rank).
bool is_value_or_list_key(const std::string& key) { return key == "memory.limit"; }

// Keys whose value is a list; every other key takes a single value.
bool is_list_key(const std::string& key) {
  return key == "parallel.spd.drop" || key == "parallel.decoupled.from" || key == "parallel.speeds" ||
         key == "parallel.stages" || key == "generate.stop_token_ids" || key == "debug.dump";
}

bool is_group(const std::string& key) {
  const std::string prefix = key + ".";
  for (const auto& [k, _] : schema())
    if (k.starts_with(prefix)) return true;
  return false;
}

// Flattens the YAML mapping into dotted keys, rejecting anything the schema does not know.
void flatten(const YAML::Node& node, const std::string& prefix, const std::string& file,
             std::map<std::string, YAML::Node>& out) {
  if (!node.IsMap())
    throw UserError(file + ": " + (prefix.empty() ? "the document" : "key '" + prefix + "'") +
                    " must be a mapping of keys to values");
  for (const auto& kv : node) {
    // A key that is itself a list or mapping ({[a]: 1}, "? [a, b]") names nothing in the schema.
    if (!kv.first.IsScalar())
      throw UserError(file + ": line " + std::to_string(kv.first.Mark().line + 1) + ": a key " +
                      (prefix.empty() ? "" : "under '" + prefix + "' ") + "is a list or mapping; expected a name");
    const std::string key = prefix.empty() ? kv.first.as<std::string>() : prefix + "." + kv.first.as<std::string>();
    if (schema().count(key)) {
      const bool is_list = is_list_key(key);
      if (!(is_value_or_list_key(key) && (kv.second.IsSequence() || kv.second.IsScalar())) &&
          (is_list ? !kv.second.IsSequence() : !kv.second.IsScalar()))
        throw UserError(file + ": key '" + key + "' must be " + (is_list ? "a list" : "a single value"));
      out[key] = kv.second;
    } else if (key == "parallel" && kv.second.IsScalar() && kv.second.as<std::string>() == "auto") {
      out["parallel.auto"] = YAML::Node(true);  // `parallel: auto`
    } else if (is_group(key)) {
      flatten(kv.second, key, file, out);
    } else {
      throw UserError(file + ": unknown key '" + key + "' (see the job YAML reference in README.md)");
    }
  }
}

// yaml-cpp quotes the offending character raw; a NUL or newline from a binary file would cut or
// split the single error line.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char ch : text) {
    if (ch >= 0x20 && ch != 0x7f) {
      out += static_cast<char>(ch);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", ch);
      out += hex;
    }
  }
  return out;
}

YAML::Node parse_yaml(const std::string& text, const std::string& what) {
  try {
    return YAML::Load(text);
  } catch (const YAML::DeepRecursion& e) {
    throw UserError(what + ": not valid YAML (nested more than " + std::to_string(e.depth() - 1) + " levels deep at line " +
                    std::to_string(e.mark.line + 1) + ")");
  } catch (const YAML::Exception& e) {
    throw UserError(what + ": not valid YAML (" + printable(e.msg) + " at line " + std::to_string(e.mark.line + 1) + ")");
  } catch (const std::bad_alloc&) {  // yaml-cpp's scanner can run out of memory on malformed input
    throw UserError(what + ": not valid YAML (the parser ran out of memory)");
  }
}

// The keys that name files, with their members.
std::vector<std::pair<const char*, std::string*>> path_keys(JobConfig& c) {
  return {{"model", &c.model},
          {"input", &c.input},
          {"output", &c.output},
          {"parallel.spd.from", &c.parallel.spd.from},
          {"parallel.plan", &c.parallel.plan},
          {"calibrate.prompts", &c.calibrate.prompts},
          {"calibrate.output", &c.calibrate.output},
          {"plan.profile", &c.plan.profile},
          {"plan.output", &c.plan.output},
          {"trace", &c.trace},
          {"debug.dump_file", &c.debug.dump_file}};
}

// A job file is written next to its model and prompts more often than in the folder it is run
// from (a Slurm script's working directory, a scheduler's), so its relative paths are read from
// its own folder. A job file named without a folder is in the working directory already.
void resolve_paths(JobConfig& c, const std::set<std::string>& from_file) {
  const std::filesystem::path folder = std::filesystem::path(c.path).parent_path();
  if (folder.empty()) return;
  for (auto& [key, value] : path_keys(c)) {
    if (!from_file.count(key) || value->empty() || std::filesystem::path(*value).is_absolute()) continue;
    *value = (folder / *value).lexically_normal().string();
  }
  if (from_file.count("parallel.decoupled.from"))  // a list of paths
    for (std::string& dir : c.parallel.decoupled.from)
      if (!dir.empty() && !std::filesystem::path(dir).is_absolute()) dir = (folder / dir).lexically_normal().string();
}

}  // namespace

const char* calibrate_method_name(CalibrateMethod m) { return m == CalibrateMethod::Kl ? "kl" : "progressive"; }

JobConfig load_job_config(const std::string& path, const std::vector<std::string>& overrides) {
  // A FIFO, directory or device in place of the job file would hang or fail inside yaml-cpp.
  const YAML::Node root = parse_yaml(read_regular_file(path, "the job file"), path);
  std::map<std::string, YAML::Node> values;
  flatten(root.IsNull() ? YAML::Node(YAML::NodeType::Map) : root, "", path, values);
  for (const auto& o : overrides) {
    auto eq = o.find('=');
    if (eq == std::string::npos) throw UserError("--set " + o + ": expected key=value");
    const std::string key = o.substr(0, eq);
    if (!schema().count(key)) throw UserError("--set " + o + ": unknown key '" + key + "'");
    // YAML reads an empty value as null, which would become the string "null" (an output file
    // named null, say): as in the job file, a key set must have a value.
    const YAML::Node value = parse_yaml(o.substr(eq + 1), "--set " + o);
    if (value.IsNull()) throw UserError("--set " + o + ": key '" + key + "' needs a value");
    const bool is_list = is_list_key(key);
    if (!(is_value_or_list_key(key) && (value.IsSequence() || value.IsScalar())) &&
        (is_list ? !value.IsSequence() : !value.IsScalar()))
      throw UserError("--set " + o + ": key '" + key + "' must be " + (is_list ? "a list" : "a single value"));
    values[key] = value;
  }

  // Which values came from the job file (not from --set): only those are read relative to it.
  std::set<std::string> from_file;
  for (const auto& [key, _] : values) from_file.insert(key);
  for (const auto& o : overrides) from_file.erase(o.substr(0, o.find('=')));

  JobConfig c;
  c.path = path;
  for (const auto& [key, node] : values) {
    try {
      schema().at(key)(c, node);
    } catch (const YAML::Exception&) {
      const std::string value = node.IsScalar() ? node.as<std::string>("") : "[...]";
      if (key == "parallel.sync_dtype")
        throw UserError(path + ": key 'parallel.sync_dtype' is '" + value + "'; expected fp32, bf16 or q8");
      if (key == "parallel.split_head")
        throw UserError(path + ": key 'parallel.split_head' is '" + value + "'; expected true, false or auto");
      if (key == "parallel.sync_wait")
        throw UserError(path + ": key 'parallel.sync_wait' is '" + value + "'; expected spin, sleep or auto");
      if (key == "calibrate.method")
        throw UserError(path + ": key 'calibrate.method' is '" + value + "'; expected kl or progressive");
      if (key == "weights.dtype")
        throw UserError(path + ": key 'weights.dtype' is '" + value + "'; expected auto, fp32, bf16, fp16 or q8_0");
      if (key == "memory.limit")
        throw UserError(path + ": key 'memory.limit' is '" + value +
                        "'; expected a size (bytes, or with a unit: 500MB, 2GiB) or a share of free memory (50%, 0.5), "
                        "or a list of them, one per rank");
      if (key == "memory.pool")
        throw UserError(path + ": key 'memory.pool' is '" + value + "'; expected host or peer");
      throw UserError(path + ": key '" + key + "' has value '" + value + "' of the wrong type");
    }
  }

  resolve_paths(c, from_file);

  for (const char* required : {"model", "task", "input", "output"})
    if (!values.count(required)) throw UserError(path + ": missing required key '" + std::string(required) + "'");
  auto expect = [&](bool ok, const char* key, const std::string& what) {
    if (!ok) throw UserError(path + ": key '" + key + "' " + what);
  };
  expect(c.task == "generate" || c.task == "score" || c.task == "embed", "task",
         "is '" + c.task + "'; expected generate, score or embed");
  // More BLAS threads than the machine has CPUs only oversubscribe it, and OpenBLAS hangs when it
  // cannot allocate their buffers (found by tests/fuzz/fuzz_inputs.py: threads 100000 under a 4 GiB
  // ulimit -v never ended). Small machines may still oversubscribe a little (tests do). 0: auto.
  const int max_threads = std::max(16, static_cast<int>(std::thread::hardware_concurrency()));
  expect(c.threads >= 0 && c.threads <= max_threads, "threads",
         "is " + std::to_string(c.threads) + "; expected auto or 1 to " + std::to_string(max_threads) +
             " (the machine's CPUs, at least 16)");
  expect(c.mpi_timeout >= 0, "mpi.timeout", "must be >= 0 seconds (0: never)");
  expect(c.memory_pool == MemoryPool::Host || c.memory_limit.set() || !c.memory_limits.empty(), "memory.pool",
         "is peer, which pools the layers beyond memory.limit; set memory.limit (one size, or one per rank)");
  expect(c.backend == "cpu" || c.backend == "cuda", "backend", "is '" + c.backend + "'; expected cpu or cuda");
  expect(c.cuda.device == "auto" || c.cuda.device_index() >= 0, "cuda.device",
         "is '" + c.cuda.device + "'; expected auto or a device number (0, 1, ...)");
  expect(c.cuda.dtype == "bf16" || c.cuda.dtype == "fp16" || c.cuda.dtype == "fp32", "cuda.dtype",
         "is '" + c.cuda.dtype + "'; expected bf16, fp16 or fp32");
  expect(!c.weights_q8_dot || c.backend == "cpu", "weights.q8_dot",
         "is a CPU kernel choice; with backend: cuda, cuBLAS multiplies cuda.dtype weights as it does (q8_0 is CPU only)");
  // On a GPU cuda.dtype says how matrices are stored; weights.dtype may only repeat it.
  expect(c.backend != "cuda" || c.weights_dtype == WeightsDType::Auto || c.cuda.dtype == weights_dtype_name(c.weights_dtype),
         "weights.dtype", std::string("is ") + weights_dtype_name(c.weights_dtype) + " but cuda.dtype is " + c.cuda.dtype +
             "; with backend: cuda the weights are stored in cuda.dtype: give one of them, or the same in both");
  expect(!c.weights_bf16_dot || c.backend == "cpu", "weights.bf16_dot",
         "is a CPU kernel choice; with backend: cuda, cuBLAS multiplies cuda.dtype weights as it does");
  expect(!c.weights_bf16_dot || c.weights_dtype == WeightsDType::Auto || c.weights_dtype == WeightsDType::BF16,
         "weights.bf16_dot", std::string("needs bf16 weights; weights.dtype is ") + weights_dtype_name(c.weights_dtype));
  expect(!c.weights_q8_dot || c.weights_dtype == WeightsDType::Q8_0, "weights.q8_dot",
         std::string("needs q8_0 weights; weights.dtype is ") + weights_dtype_name(c.weights_dtype) +
             " (set weights.dtype: q8_0)");
  expect(c.generate.max_new_tokens >= 1, "generate.max_new_tokens", "must be >= 1");
  expect(c.generate.temperature >= 0, "generate.temperature", "must be >= 0");
  expect(c.generate.top_k >= 0, "generate.top_k", "must be >= 0");
  expect(c.generate.top_p > 0 && c.generate.top_p <= 1, "generate.top_p", "must be in (0, 1]");
  for (int id : c.generate.stop_token_ids)
    expect(id >= 0, "generate.stop_token_ids", "holds " + std::to_string(id) + "; expected token ids >= 0");
  expect(c.generate.stop_at_eos || c.generate.stop_token_ids.empty(), "generate.stop_token_ids",
         "is given with generate.stop_at_eos: false, which turns stop token ids off; leave one of them out");
  expect(c.generate.min_new_tokens >= 0, "generate.min_new_tokens", "must be >= 0");
  expect(c.generate.n >= 1 && c.generate.n <= 1000000, "generate.n", "must be >= 1 (samples per prompt)");
  expect(c.generate.n == 1 || c.task == "generate", "generate.n", "is " + std::to_string(c.generate.n) +
         " but the task is " + c.task + "; samples per prompt are for generate"); 
  expect(c.generate.repetition_penalty > 0 && std::isfinite(c.generate.repetition_penalty), "generate.repetition_penalty",
         "must be > 0 (1: none)");
  expect(std::isfinite(c.generate.presence_penalty), "generate.presence_penalty", "must be a finite number");
  expect(std::isfinite(c.generate.frequency_penalty), "generate.frequency_penalty", "must be a finite number");
  expect(c.generate.min_p >= 0 && c.generate.min_p <= 1, "generate.min_p", "must be in [0, 1]");
  expect(c.generate.logprobs >= 0 && c.generate.logprobs <= 1000, "generate.logprobs",
         "must be 0 to 1000 (top alternatives per new token)");
  expect(c.score.window >= 0, "score.window", "must be >= 0 (0: no windows)");
  if (c.score.window > 0 && c.score.stride == 0) c.score.stride = c.score.window / 2;
  expect(c.score.window == 0 || (c.score.stride >= 1 && c.score.stride < c.score.window), "score.stride",
         "must be 1 to score.window - 1 (every target needs a token of context in its window)");
  expect(c.score.window > 0 || c.score.stride == 0, "score.stride", "needs score.window");
  expect(c.embed.pooling == "mean" || c.embed.pooling == "cls" || c.embed.pooling == "last", "embed.pooling",
         "is '" + c.embed.pooling + "'; expected mean, cls or last");
  expect(c.batch.max_tokens >= 1, "batch.max_tokens", "must be >= 1");
  expect(c.batch.max_sequences >= 1, "batch.max_sequences", "must be >= 1");
  expect(c.parallel.tp >= 1, "parallel.tp", "must be >= 1");
  expect(c.parallel.dp >= 0, "parallel.dp", "must be >= 1, or auto");
  expect(c.parallel.bp >= 1, "parallel.bp", "must be >= 1");
  expect(c.parallel.pp >= 1, "parallel.pp", "must be >= 1");
  expect(c.parallel.micro_batches >= 0, "parallel.micro_batches", "must be >= 1, or auto");
  expect(c.parallel.stages.empty() || static_cast<int>(c.parallel.stages.size()) == c.parallel.pp, "parallel.stages",
         "must list the layers of each of the parallel.pp stages");
  expect(c.parallel.tp == 1 || c.parallel.bp == 1, "parallel.bp",
         "and parallel.tp are both > 1; a decoupled model runs its sub-blocks on bp ranks without TP inside them");
  expect(c.parallel.spd.drop.empty() || c.parallel.spd.from.empty(), "parallel.spd",
         "has both 'drop' and 'from'; give one");
  const DecoupledOptions& dc = c.parallel.decoupled;
  expect(dc.from.empty() || c.parallel.auto_plan || !c.parallel.plan.empty(), "parallel.decoupled.from",
         "lists checkpoints for the planner to choose from; set parallel: auto (or parallel.plan to a plan made so), "
         "or give one checkpoint as the model");
  expect(!dc.budgeted() || !dc.from.empty(), "parallel.decoupled.budget", "is given without parallel.decoupled.from");
  expect(dc.min_cosine <= 1, "parallel.decoupled.budget.min_cosine", "must be at most 1 (a cosine)");
  expect(c.calibrate.rows >= 1, "calibrate.rows", "must be >= 1");
  expect(c.calibrate.sensitive >= 0 && c.calibrate.extreme >= c.calibrate.sensitive, "calibrate.extreme",
         "must be >= calibrate.sensitive >= 0");
  const bool hand_picked = c.parallel.tp > 1 || c.parallel.bp > 1 || c.parallel.dp != 1 || c.parallel.pp > 1 ||
                           !c.parallel.speeds.empty();
  expect(!(c.parallel.auto_plan && !c.parallel.plan.empty()), "parallel.plan", "and parallel: auto both given; give one");
  expect(!((c.parallel.auto_plan || !c.parallel.plan.empty()) && hand_picked), "parallel",
         std::string("has ") + (c.parallel.auto_plan ? "auto" : "a plan file") +
             " and also tp, bp, dp or speeds; the plan decides those, so give one or the other");
  expect(c.parallel.speeds.empty() || static_cast<int>(c.parallel.speeds.size()) == c.parallel.group(), "parallel.speeds",
         "must list one relative speed per rank of a replica (" + std::to_string(c.parallel.group()) + ")");
  for (double v : c.parallel.speeds) expect(v > 0, "parallel.speeds", "must be positive numbers");
  c.has_rows = values.count("rows.first") || values.count("rows.count");
  const bool has_shard = values.count("shard.index") || values.count("shard.count");
  expect(!(c.has_rows && has_shard), "rows", "and shard both given; they choose the rows in two ways, give one");
  if (c.has_rows) {
    expect(c.rows.first >= 0, "rows.first", "must be >= 0");
    expect(c.rows.count >= 1 || !values.count("rows.count"), "rows.count", "must be >= 1");
  }
  if (has_shard) {
    expect(values.count("shard.index") && values.count("shard.count"), "shard", "needs both index and count");
    expect(c.shard.count >= 1, "shard.count", "must be >= 1");
    expect(c.shard.index >= 0 && c.shard.index < c.shard.count, "shard.index",
           "is " + std::to_string(c.shard.index) + "; expected 0 to shard.count - 1 (" + std::to_string(c.shard.count - 1) + ")");
  }
  expect(c.plan.objective == "throughput" || c.plan.objective == "latency", "plan.objective",
         "is '" + c.plan.objective + "'; expected throughput or latency");
  expect(!c.plan.runtime || (c.task == "generate" && c.batch.continuous), "plan.runtime",
         "decides between continuous-batching passes of a generate job; needs task: generate and batch.continuous: true");
  expect(!c.plan.runtime || c.debug.dump.empty(), "plan.runtime", "and debug.dump both given; dump without plan.runtime");
  expect(!c.plan.runtime || !c.parallel.auto_plan, "plan.runtime",
         "needs a data-parallel grid whose ranks hold the whole model (parallel: {dp: auto}), not parallel: auto");
  for (const std::string& p : c.debug.dump) expect(!p.empty(), "debug.dump", "lists an empty name");
  if (!c.debug.dump.empty() && c.debug.dump_file.empty()) {
    // Next to the output, named after it: results.h5 -> results.dump.h5.
    const std::filesystem::path out(c.output);
    c.debug.dump_file = (out.extension() == ".h5" ? out.parent_path() / out.stem() : out).string() + ".dump.h5";
  }
  expect(c.debug.dump.empty() || c.debug.dump_file != c.output, "debug.dump_file", "is the job's output; give another file");
  expect(c.progress.every >= 0, "progress.every", "must be >= 0 (seconds between progress lines)");
  return c;
}

RowRange JobConfig::row_range(int64_t input_rows) const {
  RowRange r{0, input_rows};
  if (shard.count > 0) {
    r = {shard.index * input_rows / shard.count, (shard.index + 1) * input_rows / shard.count};
  } else if (has_rows) {
    if (rows.first >= input_rows)
      throw UserError(path + ": key 'rows.first' is " + std::to_string(rows.first) + " but " + input + " has " +
                      std::to_string(input_rows) + " rows (0 to " + std::to_string(input_rows - 1) + ")");
    r = {rows.first, rows.count < 0 ? input_rows : std::min(input_rows, rows.first + rows.count)};
  }
  return r;
}

int CudaOptions::device_index() const {
  if (device.empty() || device.size() > 4 || device.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoi(device);
}

const char* split_head_name(SplitHead s) {
  return s == SplitHead::On ? "true" : s == SplitHead::Off ? "false" : "auto";
}

namespace {
// The generation controls that differ from their defaults, as ", key: value" (absent ones keep the
// fingerprints of files written before these keys).
std::string generate_controls(const GenerateOptions& g) {
  std::ostringstream s;
  if (g.has_stop_token_ids) {
    s << ", stop_token_ids: [";
    for (size_t i = 0; i < g.stop_token_ids.size(); ++i) s << (i ? ", " : "") << g.stop_token_ids[i];
    s << "]";
  }
  if (g.min_new_tokens) s << ", min_new_tokens: " << g.min_new_tokens;
  if (g.repetition_penalty != 1.f) s << ", repetition_penalty: " << g.repetition_penalty;
  if (g.presence_penalty) s << ", presence_penalty: " << g.presence_penalty;
  if (g.frequency_penalty) s << ", frequency_penalty: " << g.frequency_penalty;
  if (g.min_p) s << ", min_p: " << g.min_p;
  if (g.logprobs) s << ", logprobs: " << g.logprobs;  // decides which datasets the file holds
  if (g.n != 1) s << ", n: " << g.n;                   // the output's rows
  return s.str();
}
}  // namespace

std::string JobConfig::fingerprint() const {
  // Paths as canonical absolute paths: ./x.h5 and x.h5 name the same file.
  auto canonical = [](const std::string& path) {
    std::error_code ec;
    const auto p = std::filesystem::weakly_canonical(path, ec);
    return path.empty() || ec ? path : p.string();
  };
  std::ostringstream s;
  s << "model: " << canonical(model) << "\ntask: " << task << "\ninput: " << canonical(input) << "\n";
  if (task == "generate")
    s << "generate: {max_new_tokens: " << generate.max_new_tokens << ", temperature: " << generate.temperature
      << ", top_k: " << generate.top_k << ", top_p: " << generate.top_p << ", seed: " << generate.seed
      << ", stop_at_eos: " << (generate.stop_at_eos ? "true" : "false") << generate_controls(generate) << "}\n";
  if (task == "score" && score.window > 0) s << "score: {window: " << score.window << ", stride: " << score.stride << "}\n";
  if (task == "embed")
    s << "embed: {pooling: " << embed.pooling << ", normalize: " << (embed.normalize ? "true" : "false") << "}\n";
  // Tensor parallelism changes results only by float rounding, but with Sync-Point Drop the split
  // and the dropped layers change the model's function.
  s << "parallel: {tp: " << parallel.tp << ", bp: " << parallel.bp << ", spd: {drop: [";
  for (size_t i = 0; i < parallel.spd.drop.size(); ++i) s << (i ? ", " : "") << parallel.spd.drop[i];
  s << "], from: '" << canonical(parallel.spd.from) << "', max_kl: " << parallel.spd.max_kl
    << ", min_top1: " << parallel.spd.min_top1 << "}, sync_dtype: " << sync_dtype_name(parallel.sync_dtype)
    << ", plan: '" << canonical(parallel.plan) << "', auto: "
    << (parallel.auto_plan ? "true" : "false");
  // A split head changes log-probs by float rounding (its log-sum-exp is merged across ranks), as
  // tp does; left out when off, keeping the fingerprints of files written before this key.
  if (parallel.split_head != SplitHead::Off) s << ", split_head: " << split_head_name(parallel.split_head);
  // Decoupled checkpoints the planner may run instead of the model change its function as SPD does;
  // left out when none are listed, keeping older fingerprints.
  if (!parallel.decoupled.from.empty()) {
    s << ", decoupled: {from: [";
    for (size_t i = 0; i < parallel.decoupled.from.size(); ++i)
      s << (i ? ", " : "") << "'" << canonical(parallel.decoupled.from[i]) << "'";
    s << "], min_cosine: " << parallel.decoupled.min_cosine << ", max_kl: " << parallel.decoupled.max_kl << "}";
  }
  s << "}\n";
  // Which rows the output holds (absent for the whole input, as in files from before these keys).
  if (has_rows) s << "rows: {first: " << rows.first << ", count: " << rows.count << "}\n";
  // A shard's rows follow the batches (see run_job's shard_rows): the batch limits decide them too.
  if (shard.count > 0)
    s << "shard: {index: " << shard.index << ", count: " << shard.count << ", max_tokens: " << batch.max_tokens
      << ", max_sequences: " << batch.max_sequences << "}\n";
  // The backend changes results beyond float rounding when it stores weights in 16 bits, so rows of
  // one output file all come from the same backend and dtype. The device does not matter.
  s << "backend: " << backend << "\n";
  if (backend == "cuda") s << "cuda: {dtype: " << cuda.dtype << "}\n";
  // 16-bit CPU weights likewise (fp32 ones: absent, as in files from before the key). `auto` is
  // resolved from the checkpoint before a run writes this (with_resolved_weights).
  if (backend == "cpu" && weights_dtype != WeightsDType::F32 && weights_dtype != WeightsDType::Auto)
    s << "weights: {dtype: " << weights_dtype_name(weights_dtype) << "}\n";
  // Rounding the activations to bf16 changes results (absent when off, as in files from before the key).
  if (backend == "cpu" && weights_bf16_dot) s << "weights_bf16_dot: true\n";
  // So does quantising them to q8_0.
  if (backend == "cpu" && weights_q8_dot) s << "weights_q8_dot: true\n";
  return s.str();
}

namespace {

// Numbers in their shortest form that reads back to the same value (0.7, not 0.699999988).
template <class T>
std::string shortest(T v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string absolute(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  const auto p = std::filesystem::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

}  // namespace

std::string JobConfig::to_yaml() const {
  JobConfig c = *this;
  for (auto& [key, value] : path_keys(c)) *value = absolute(*value);
  for (std::string& dir : c.parallel.decoupled.from) dir = absolute(dir);
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "model" << YAML::Value << c.model;
  e << YAML::Key << "task" << YAML::Value << c.task;
  e << YAML::Key << "input" << YAML::Value << c.input;
  e << YAML::Key << "output" << YAML::Value << c.output;
  auto or_auto = [](int v) { return v == 0 ? std::string("auto") : std::to_string(v); };
  e << YAML::Key << "threads" << YAML::Value << or_auto(c.threads);
  e << YAML::Key << "backend" << YAML::Value << c.backend;
  if (!c.trace.empty()) e << YAML::Key << "trace" << YAML::Value << c.trace;
  e << YAML::Key << "mpi" << YAML::Value << YAML::BeginMap << YAML::Key << "timeout" << YAML::Value
    << shortest(c.mpi_timeout) << YAML::EndMap;
  auto limit_text = [](const MemoryLimit& m) {
    return m.bytes > 0 ? std::to_string(m.bytes) : shortest(100 * m.fraction) + "%";
  };
  if (c.memory_limit.set() || !c.memory_limits.empty() || c.memory_pool != MemoryPool::Host) {
    e << YAML::Key << "memory" << YAML::Value << YAML::BeginMap;
    if (!c.memory_limits.empty()) {
      e << YAML::Key << "limit" << YAML::Value << YAML::Flow << YAML::BeginSeq;
      for (const MemoryLimit& m : c.memory_limits) e << limit_text(m);
      e << YAML::EndSeq;
    } else if (c.memory_limit.set()) {
      e << YAML::Key << "limit" << YAML::Value << limit_text(c.memory_limit);
    }
    if (c.memory_pool != MemoryPool::Host) e << YAML::Key << "pool" << YAML::Value << memory_pool_name(c.memory_pool);
    e << YAML::EndMap;
  }
  e << YAML::Key << "cuda" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "device" << YAML::Value << c.cuda.device;
  e << YAML::Key << "dtype" << YAML::Value << c.cuda.dtype << YAML::EndMap;
  e << YAML::Key << "weights" << YAML::Value << YAML::BeginMap << YAML::Key << "dtype" << YAML::Value
    << weights_dtype_name(c.weights_dtype) << YAML::Key << "bf16_dot" << YAML::Value << c.weights_bf16_dot
    << YAML::Key << "q8_dot" << YAML::Value << c.weights_q8_dot << YAML::EndMap;
  e << YAML::Key << "generate" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "max_new_tokens" << YAML::Value << c.generate.max_new_tokens;
  e << YAML::Key << "temperature" << YAML::Value << shortest(c.generate.temperature);
  e << YAML::Key << "top_k" << YAML::Value << c.generate.top_k;
  e << YAML::Key << "top_p" << YAML::Value << shortest(c.generate.top_p);
  e << YAML::Key << "seed" << YAML::Value << c.generate.seed;
  e << YAML::Key << "stop_at_eos" << YAML::Value << c.generate.stop_at_eos;
  if (c.generate.has_stop_token_ids)
    e << YAML::Key << "stop_token_ids" << YAML::Value << YAML::Flow << c.generate.stop_token_ids;
  e << YAML::Key << "min_new_tokens" << YAML::Value << c.generate.min_new_tokens;
  e << YAML::Key << "repetition_penalty" << YAML::Value << shortest(c.generate.repetition_penalty);
  e << YAML::Key << "presence_penalty" << YAML::Value << shortest(c.generate.presence_penalty);
  e << YAML::Key << "frequency_penalty" << YAML::Value << shortest(c.generate.frequency_penalty);
  e << YAML::Key << "min_p" << YAML::Value << shortest(c.generate.min_p);
  e << YAML::Key << "logprobs" << YAML::Value << c.generate.logprobs;
  e << YAML::Key << "n" << YAML::Value << c.generate.n << YAML::EndMap;
  e << YAML::Key << "score" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "window" << YAML::Value << c.score.window;
  e << YAML::Key << "stride" << YAML::Value << c.score.stride << YAML::EndMap;
  e << YAML::Key << "embed" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "pooling" << YAML::Value << c.embed.pooling;
  e << YAML::Key << "normalize" << YAML::Value << c.embed.normalize << YAML::EndMap;
  e << YAML::Key << "batch" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "max_tokens" << YAML::Value << c.batch.max_tokens;
  e << YAML::Key << "max_sequences" << YAML::Value << c.batch.max_sequences;
  e << YAML::Key << "continuous" << YAML::Value << c.batch.continuous << YAML::EndMap;
  // `parallel: auto` is written as `parallel: {auto: true, ...}`, which also holds spd keys.
  e << YAML::Key << "parallel" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "tp" << YAML::Value << c.parallel.tp;
  e << YAML::Key << "bp" << YAML::Value << c.parallel.bp;
  e << YAML::Key << "dp" << YAML::Value << or_auto(c.parallel.dp);
  e << YAML::Key << "pp" << YAML::Value << c.parallel.pp;
  if (!c.parallel.stages.empty()) e << YAML::Key << "stages" << YAML::Value << YAML::Flow << c.parallel.stages;
  if (c.parallel.micro_batches > 0) e << YAML::Key << "micro_batches" << YAML::Value << c.parallel.micro_batches;
  if (!c.parallel.speeds.empty()) {
    e << YAML::Key << "speeds" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (double v : c.parallel.speeds) e << shortest(v);
    e << YAML::EndSeq;
  }
  e << YAML::Key << "sync_dtype" << YAML::Value << sync_dtype_name(c.parallel.sync_dtype);
  if (c.parallel.split_head != SplitHead::Off)
    e << YAML::Key << "split_head" << YAML::Value << split_head_name(c.parallel.split_head);
  e << YAML::Key << "sync_wait" << YAML::Value << sync_wait_name(c.parallel.sync_wait);
  if (!c.parallel.plan.empty()) e << YAML::Key << "plan" << YAML::Value << c.parallel.plan;
  if (c.parallel.auto_plan) e << YAML::Key << "auto" << YAML::Value << true;
  e << YAML::Key << "spd" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "drop" << YAML::Value << YAML::Flow << c.parallel.spd.drop;
  if (!c.parallel.spd.from.empty()) e << YAML::Key << "from" << YAML::Value << c.parallel.spd.from;
  // A budget below 0 means "the calibration file's own": left out, as in a job that does not say.
  if (c.parallel.spd.max_kl >= 0 || c.parallel.spd.min_top1 >= 0) {
    e << YAML::Key << "budget" << YAML::Value << YAML::BeginMap;
    if (c.parallel.spd.max_kl >= 0) e << YAML::Key << "max_kl" << YAML::Value << shortest(c.parallel.spd.max_kl);
    if (c.parallel.spd.min_top1 >= 0) e << YAML::Key << "min_top1" << YAML::Value << shortest(c.parallel.spd.min_top1);
    e << YAML::EndMap;
  }
  e << YAML::EndMap;  // spd
  if (!c.parallel.decoupled.from.empty()) {
    const DecoupledOptions& d = c.parallel.decoupled;
    e << YAML::Key << "decoupled" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "from" << YAML::Value << YAML::Flow << d.from;
    if (d.budgeted()) {
      e << YAML::Key << "budget" << YAML::Value << YAML::BeginMap;
      if (d.min_cosine >= 0) e << YAML::Key << "min_cosine" << YAML::Value << shortest(d.min_cosine);
      if (d.max_kl >= 0) e << YAML::Key << "max_kl" << YAML::Value << shortest(d.max_kl);
      e << YAML::EndMap;
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap;  // parallel
  e << YAML::Key << "calibrate" << YAML::Value << YAML::BeginMap;
  if (!c.calibrate.prompts.empty()) e << YAML::Key << "prompts" << YAML::Value << c.calibrate.prompts;
  e << YAML::Key << "rows" << YAML::Value << c.calibrate.rows;
  e << YAML::Key << "max_kl" << YAML::Value << shortest(c.calibrate.max_kl);
  e << YAML::Key << "min_top1" << YAML::Value << shortest(c.calibrate.min_top1);
  e << YAML::Key << "method" << YAML::Value << calibrate_method_name(c.calibrate.method);
  e << YAML::Key << "sensitive" << YAML::Value << shortest(c.calibrate.sensitive);
  e << YAML::Key << "extreme" << YAML::Value << shortest(c.calibrate.extreme);
  e << YAML::Key << "output" << YAML::Value << c.calibrate.output << YAML::EndMap;
  e << YAML::Key << "plan" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "objective" << YAML::Value << c.plan.objective;
  e << YAML::Key << "profile" << YAML::Value << c.plan.profile;
  e << YAML::Key << "output" << YAML::Value << c.plan.output;
  if (c.plan.runtime) e << YAML::Key << "runtime" << YAML::Value << true;  // left out when off: older files compare equal
  e << YAML::EndMap;
  if (c.has_rows) {
    e << YAML::Key << "rows" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "first" << YAML::Value << c.rows.first;
    if (c.rows.count >= 0) e << YAML::Key << "count" << YAML::Value << c.rows.count;
    e << YAML::EndMap;
  }
  if (c.shard.count > 0) {
    e << YAML::Key << "shard" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "index" << YAML::Value << c.shard.index;
    e << YAML::Key << "count" << YAML::Value << c.shard.count << YAML::EndMap;
  }
  e << YAML::Key << "progress" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "every" << YAML::Value << shortest(c.progress.every) << YAML::EndMap;
  if (!c.debug.dump.empty()) {
    e << YAML::Key << "debug" << YAML::Value << YAML::BeginMap;
    e << YAML::Key << "dump" << YAML::Value << YAML::Flow << c.debug.dump;
    e << YAML::Key << "dump_file" << YAML::Value << c.debug.dump_file << YAML::EndMap;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace lowsync
