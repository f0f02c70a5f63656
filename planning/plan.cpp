#include "planning/plan.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

const char* split_name(ReplicaSplit s) { return s == ReplicaSplit::Tensor ? "tp" : "bp"; }

std::string config_digest(const ModelConfig& model) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : model.json_text) h = (h ^ c) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

int Plan::syncs_in_layer(int l, const ModelConfig& model) const {
  if (group == 1) return 0;
  if (split == ReplicaSplit::Block) {
    // A coupled layer is a TP layer; a segment of decoupled layers merges its streams after its last.
    for (const DecoupledSpec::Segment& s : model.bp.segments(model.n_layers))
      if (l >= s.first && l < s.end) return s.coupled ? 2 : (l == s.end - 1 ? 1 : 0);
    return 0;
  }
  return spd_drop[l] ? 1 : 2;
}

int Plan::syncs_per_pass(const ModelConfig& model) const {
  int n = 0;
  for (int l = 0; l < model.n_layers; ++l) n += syncs_in_layer(l, model);
  return n;
}

int Plan::syncs_in_stage(int stage, const ModelConfig& model) const {
  int n = 0;
  for (int l = stages[stage].begin; l < stages[stage].end(); ++l) n += syncs_in_layer(l, model);
  return n;
}

int Plan::dropped_layers() const { return static_cast<int>(std::count(spd_drop.begin(), spd_drop.end(), true)); }

std::string Plan::describe() const {
  std::ostringstream s;
  if (pp > 1) {
    s << "pp=" << pp << " (layers ";
    for (size_t i = 0; i < stages.size(); ++i) s << (i ? "+" : "") << stages[i].count;
    s << ", " << micro_batches << " micro-batches) ";
  }
  s << split_name(split) << "=" << group << " dp=" << dp;
  auto counts = [&](Span LayerShare::*span) {
    std::string out;
    for (size_t r = 0; r < shares.size(); ++r) out += (r ? "+" : "") + std::to_string((shares[r].*span).count);
    return out;
  };
  if (memory_budget.set()) {
    int streamed = 0;
    for (int w = 0; w < static_cast<int>(resident_layers.size()); ++w) streamed += layers_of(w).count - resident_layers[w];
    if (streamed > 0) {
      s << " [" << streamed << " layer shares streamed under memory.limit";
      for (int w = 0; w < static_cast<int>(pool_holder.size()); ++w)
        if (pool_holder[w] >= 0) s << "; rank " << w << "'s held by rank " << pool_holder[w];
      s << "]";
    }
  }
  if (group > 1) {
    if (split == ReplicaSplit::Tensor)
      s << ": heads " << counts(&LayerShare::heads) << ", kv heads " << counts(&LayerShare::kv_heads) << ", ffn "
        << counts(&LayerShare::ffn);
    else
      s << ": sub-blocks " << counts(&LayerShare::sub_blocks);
  }
  if (split == ReplicaSplit::Tensor && group > 1) s << "; SPD drops " << dropped_layers() << "/" << layers();
  if (group > 1 && sync_dtype != SyncDType::F32) s << "; syncs in " << sync_dtype_name(sync_dtype);
  if (head_split()) {
    s << "; head rows ";
    for (size_t r = 0; r < head.size(); ++r) s << (r ? "+" : "") << head[r].count;
  }
  return s.str();
}

std::string Plan::to_yaml(const ModelConfig& model) const {
  YAML::Emitter e;
  auto span = [&](const Span& sp) { e << YAML::Flow << YAML::BeginSeq << sp.begin << sp.count << YAML::EndSeq; };
  e << YAML::BeginMap;
  e << YAML::Key << "lowsync_plan" << YAML::Value << 1;
  e << YAML::Key << "made_for" << YAML::Value << YAML::BeginMap;
  e << YAML::Key << "model" << YAML::Value << this->model;
  e << YAML::Key << "config_digest" << YAML::Value << model_digest;
  e << YAML::Key << "world" << YAML::Value << world;
  e << YAML::Key << "task" << YAML::Value << limits.task;
  e << YAML::Key << "max_tokens" << YAML::Value << limits.max_tokens;
  e << YAML::Key << "max_sequences" << YAML::Value << limits.max_sequences;
  e << YAML::Key << "max_new_tokens" << YAML::Value << limits.max_new_tokens;
  e << YAML::Key << "weights_dtype" << YAML::Value << weights_dtype_name(limits.weights);
  e << YAML::EndMap;
  e << YAML::Key << "grid" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "split" << YAML::Value
    << split_name(split) << YAML::Key << "group" << YAML::Value << group << YAML::Key << "dp" << YAML::Value << dp
    << YAML::Key << "pp" << YAML::Value << pp << YAML::EndMap;
  e << YAML::Key << "shares" << YAML::Value << YAML::BeginSeq;
  for (size_t r = 0; r < shares.size(); ++r) {
    e << YAML::Flow << YAML::BeginMap << YAML::Key << "rank" << YAML::Value << r;
    if (split == ReplicaSplit::Tensor) {
      e << YAML::Key << "heads" << YAML::Value;
      span(shares[r].heads);
      e << YAML::Key << "kv_heads" << YAML::Value;
      span(shares[r].kv_heads);
      e << YAML::Key << "ffn" << YAML::Value;
      span(shares[r].ffn);
    } else {
      e << YAML::Key << "sub_blocks" << YAML::Value;
      span(shares[r].sub_blocks);
    }
    e << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "stages" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const Span& st : stages) span(st);
  e << YAML::EndSeq;
  e << YAML::Key << "micro_batches" << YAML::Value << micro_batches;
  if (memory_budget.set()) {
    if (memory_budget.rank_limits.empty())
      e << YAML::Key << "memory_limit" << YAML::Value << memory_budget.limit;
    else
      e << YAML::Key << "memory_limits" << YAML::Value << YAML::Flow << memory_budget.rank_limits;
    e << YAML::Key << "memory_pool" << YAML::Value << memory_pool_name(memory_budget.pool);
    e << YAML::Key << "resident_layers" << YAML::Value << YAML::Flow << resident_layers;  // [world rank]
    if (!pool_holder.empty()) e << YAML::Key << "pool_holders" << YAML::Value << YAML::Flow << pool_holder;
  }
  std::vector<int> dropped, syncs;
  for (int l = 0; l < model.n_layers; ++l) {
    if (l < layers() && spd_drop[l]) dropped.push_back(l);
    syncs.push_back(syncs_in_layer(l, model));
  }
  e << YAML::Key << "spd_drop" << YAML::Value << YAML::Flow << dropped;
  e << YAML::Key << "syncs_per_layer" << YAML::Value << YAML::Flow << syncs;
  e << YAML::Key << "sync_dtype" << YAML::Value << sync_dtype_name(sync_dtype);
  if (head_split()) {  // left out: every rank computes the whole head
    e << YAML::Key << "head" << YAML::Value << YAML::Flow << YAML::BeginSeq;
    for (const Span& h : head) span(h);
    e << YAML::EndSeq;
  }
  e << YAML::Key << "memory" << YAML::Value << YAML::BeginSeq;
  for (int w = 0; w < static_cast<int>(memory.size()); ++w) {
    e << YAML::Flow << YAML::BeginMap << YAML::Key << "world_rank" << YAML::Value << w << YAML::Key << "stage"
      << YAML::Value << stage_of(w) << YAML::Key << "rank" << YAML::Value << group_rank_of(w) << YAML::Key << "weights"
      << YAML::Value << memory[w].weights << YAML::Key << "kv_cache" << YAML::Value << memory[w].kv_cache << YAML::Key
      << "activations" << YAML::Value << memory[w].activations;
    if (memory[w].pooled > 0) e << YAML::Key << "pooled" << YAML::Value << memory[w].pooled;
    e << YAML::Key << "total" << YAML::Value << memory[w].total() << YAML::EndMap;
  }
  e << YAML::EndSeq;
  e << YAML::Key << "chosen_by" << YAML::Value << chosen_by;
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

void Plan::save(const std::string& path, const ModelConfig& model) const {
  std::ofstream f(path);
  f << to_yaml(model);
  if (!f) throw UserError(path + ": cannot write the plan");
}

Plan Plan::load(const std::string& path) {
  Plan p = parse(read_regular_file(path, "the plan file"), path);
  p.chosen_by = "plan file " + path + (p.chosen_by.empty() ? "" : " (" + p.chosen_by + ")");
  return p;
}

Plan Plan::parse(const std::string& yaml, const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": not valid YAML (" + e.msg + ")");
  }
  auto node = [&](const YAML::Node& parent, const std::string& key, const std::string& where) {
    const YAML::Node n = parent[key];
    if (!n) throw UserError(path + ": missing key '" + where + key + "'");
    return n;
  };
  auto get = [&](const YAML::Node& parent, const std::string& key, const std::string& where, auto fallback) {
    const YAML::Node n = node(parent, key, where);
    try {
      return n.as<decltype(fallback)>();
    } catch (const YAML::Exception&) {
      throw UserError(path + ": key '" + where + key + "' has a value of the wrong type");
    }
  };
  if (!root.IsMap() || !root["lowsync_plan"]) throw UserError(path + ": not a lowsync plan (no 'lowsync_plan' key)");
  Plan p;
  const YAML::Node made = node(root, "made_for", "");
  p.model = get(made, "model", "made_for.", std::string());
  // Optional, so that a plan can be written by hand; without it the model's path must match.
  if (made["config_digest"]) p.model_digest = get(made, "config_digest", "made_for.", std::string());
  p.world = get(made, "world", "made_for.", 0);
  p.limits.task = get(made, "task", "made_for.", std::string());
  p.limits.max_tokens = get(made, "max_tokens", "made_for.", 0);
  p.limits.max_sequences = get(made, "max_sequences", "made_for.", 0);
  p.limits.max_new_tokens = get(made, "max_new_tokens", "made_for.", 0);
  // Optional: plans from before the key were made for fp32 weights.
  if (made["weights_dtype"]) {
    const std::string d = get(made, "weights_dtype", "made_for.", std::string());
    if (!parse_weights_dtype(d, p.limits.weights) || p.limits.weights == WeightsDType::Auto)
      throw UserError(path + ": key 'made_for.weights_dtype' is '" + d + "'; expected fp32, bf16, fp16 or q8_0");
  }
  const YAML::Node grid = node(root, "grid", "");
  const std::string split = get(grid, "split", "grid.", std::string());
  if (split != "tp" && split != "bp") throw UserError(path + ": grid.split is '" + split + "'; expected tp or bp");
  p.split = split == "tp" ? ReplicaSplit::Tensor : ReplicaSplit::Block;
  p.group = get(grid, "group", "grid.", 0);
  p.dp = get(grid, "dp", "grid.", 0);
  p.pp = get(grid, "pp", "grid.", 0);
  if (p.group < 1 || p.dp < 1 || p.pp < 1) throw UserError(path + ": grid needs group, dp and pp >= 1");
  const YAML::Node shares = node(root, "shares", "");
  if (!shares.IsSequence() || static_cast<int>(shares.size()) != p.group)
    throw UserError(path + ": 'shares' must list " + std::to_string(p.group) + " ranks (grid.group)");
  for (size_t r = 0; r < shares.size(); ++r) {
    const std::string where = "shares[" + std::to_string(r) + "].";
    auto span = [&](const char* key) {
      const std::vector<int> v = get(shares[r], key, where, std::vector<int>());
      if (v.size() != 2) throw UserError(path + ": key '" + where + key + "' must be [begin, count]");
      return Span{v[0], v[1]};
    };
    LayerShare s;
    if (p.split == ReplicaSplit::Tensor) {
      s.heads = span("heads");
      s.kv_heads = span("kv_heads");
      s.ffn = span("ffn");
    } else {
      s.sub_blocks = span("sub_blocks");
    }
    p.shares.push_back(s);
  }
  // Stages: optional (a plan without a pipeline may leave them out: one stage of every layer).
  if (root["stages"]) {
    const YAML::Node stages = root["stages"];
    if (!stages.IsSequence() || static_cast<int>(stages.size()) != p.pp)
      throw UserError(path + ": 'stages' must list " + std::to_string(p.pp) + " [first layer, count] pairs (grid.pp)");
    for (size_t i = 0; i < stages.size(); ++i) {
      std::vector<int> v;
      try {
        v = stages[i].as<std::vector<int>>();
      } catch (const YAML::Exception&) {
      }
      if (v.size() != 2) throw UserError(path + ": key 'stages[" + std::to_string(i) + "]' must be [first layer, count]");
      p.stages.push_back({v[0], v[1]});
    }
  }
  if (root["micro_batches"]) p.micro_batches = get(root, "micro_batches", "", 0);
  if (root["memory_limit"]) p.memory_budget.limit = get(root, "memory_limit", "", int64_t(0));
  if (root["memory_limits"]) p.memory_budget.rank_limits = get(root, "memory_limits", "", std::vector<int64_t>());
  if (root["memory_pool"]) {
    const std::string name = get(root, "memory_pool", "", std::string());
    if (!parse_memory_pool(name, p.memory_budget.pool))
      throw UserError(path + ": key 'memory_pool' is '" + name + "'; expected host or peer");
  }
  const std::vector<int> dropped = get(root, "spd_drop", "", std::vector<int>());
  p.spd_drop.assign(static_cast<size_t>(std::max(0, dropped.empty() ? 0 : *std::max_element(dropped.begin(), dropped.end()) + 1)), false);
  for (int l : dropped) {
    if (l < 0) throw UserError(path + ": spd_drop lists layer " + std::to_string(l));
    p.spd_drop[l] = true;
  }
  if (root["sync_dtype"]) {  // optional: fp32 when left out
    const std::string name = get(root, "sync_dtype", "", std::string());
    if (!parse_sync_dtype(name, p.sync_dtype))
      throw UserError(path + ": key 'sync_dtype' is '" + name + "'; expected fp32, bf16 or q8");
  }
  if (root["head"]) {  // optional: the whole head on every rank when left out
    const YAML::Node head = root["head"];
    if (!head.IsSequence() || static_cast<int>(head.size()) != p.group)
      throw UserError(path + ": 'head' must list " + std::to_string(p.group) + " [first row, count] pairs (grid.group)");
    for (size_t i = 0; i < head.size(); ++i) {
      std::vector<int> v;
      try {
        v = head[i].as<std::vector<int>>();
      } catch (const YAML::Exception&) {
      }
      if (v.size() != 2) throw UserError(path + ": key 'head[" + std::to_string(i) + "]' must be [first row, count]");
      p.head.push_back({v[0], v[1]});
    }
  }
  if (root["chosen_by"] && root["chosen_by"].IsScalar()) p.chosen_by = root["chosen_by"].as<std::string>();
  return p;
}

}  // namespace lowsync
