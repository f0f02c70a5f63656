#include "planning/calibration.h"

#include <yaml-cpp/yaml.h>

#include <fstream>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

const char* spd_class_name(SpdClass c) {
  return c == SpdClass::Insensitive ? "insensitive" : c == SpdClass::Sensitive ? "sensitive" : "extremely sensitive";
}

std::vector<int> Calibration::drop_within(double kl_budget, double top1_budget) const {
  std::vector<int> out;
  for (size_t i = 0; i < prefix.size() && i < order.size(); ++i) {
    if (prefix[i].kl > kl_budget || prefix[i].top1 < top1_budget) break;
    out.push_back(order[i]);
  }
  return out;
}

void Calibration::save(const std::string& path) const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  e << YAML::Key << "model" << YAML::Value << model;
  e << YAML::Key << "tp" << YAML::Value << tp;
  e << YAML::Key << "prompts" << YAML::Value << prompts;
  e << YAML::Key << "rows" << YAML::Value << rows;
  e << YAML::Key << "tokens" << YAML::Value << tokens;
  auto seq = [&](const char* key, const std::vector<LayerSensitivity>& v, bool with_layer) {
    e << YAML::Key << key << YAML::Value << YAML::BeginSeq;
    for (const auto& s : v) {
      e << YAML::Flow << YAML::BeginMap;
      if (with_layer) e << YAML::Key << "layer" << YAML::Value << s.layer;
      e << YAML::Key << "kl" << YAML::Value << s.kl << YAML::Key << "top1" << YAML::Value << s.top1 << YAML::EndMap;
    }
    e << YAML::EndSeq;
  };
  seq("layers", layers, true);
  if (!progressive.empty()) {
    e << YAML::Key << "progressive" << YAML::Value << YAML::BeginSeq;
    for (const ProgressiveStep& p : progressive)
      e << YAML::Flow << YAML::BeginMap << YAML::Key << "layer" << YAML::Value << p.layer << YAML::Key << "ppl_before"
        << YAML::Value << p.ppl_before << YAML::Key << "ppl_after" << YAML::Value << p.ppl_after << YAML::Key
        << "increase" << YAML::Value << p.increase << YAML::Key << "class" << YAML::Value << spd_class_name(p.cls)
        << YAML::EndMap;
    e << YAML::EndSeq;
    e << YAML::Key << "thresholds" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "sensitive"
      << YAML::Value << sensitive << YAML::Key << "extreme" << YAML::Value << extreme << YAML::EndMap;
  }
  e << YAML::Key << "order" << YAML::Value << YAML::Flow << order;
  seq("prefix", prefix, false);  // prefix[i]: order[0..i] dropped together
  e << YAML::Key << "budget" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "max_kl" << YAML::Value
    << max_kl << YAML::Key << "min_top1" << YAML::Value << min_top1 << YAML::EndMap;
  e << YAML::Key << "drop" << YAML::Value << YAML::Flow << drop;
  if (sync_dtypes.size() == 2) {
    e << YAML::Key << "sync_dtypes" << YAML::Value << YAML::BeginMap;
    for (int i = 0; i < 2; ++i)
      e << YAML::Key << (i == 0 ? "bf16" : "q8") << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "kl"
        << YAML::Value << sync_dtypes[i].kl << YAML::Key << "top1" << YAML::Value << sync_dtypes[i].top1 << YAML::EndMap;
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  std::ofstream out(path);
  if (!out) throw UserError(path + ": cannot write the calibration file");
  out << e.c_str() << "\n";
}

Calibration Calibration::load(const std::string& path) {
  YAML::Node n;
  try {
    // A regular file only: a directory, FIFO or device fails deep in the stream or never ends.
    n = YAML::Load(read_regular_file(path, "the calibration file"));
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": cannot read the calibration file (" + e.msg + ")");
  }
  Calibration c;
  try {
    c.model = n["model"].as<std::string>();
    c.tp = n["tp"].as<int>();
    c.prompts = n["prompts"].as<std::string>("");
    c.rows = n["rows"].as<int>(0);
    c.tokens = n["tokens"].as<int>(0);
    for (const auto& s : n["layers"]) c.layers.push_back({s["layer"].as<int>(), s["kl"].as<double>(), s["top1"].as<double>()});
    c.order = n["order"].as<std::vector<int>>();
    for (const auto& s : n["prefix"]) c.prefix.push_back({0, s["kl"].as<double>(), s["top1"].as<double>()});
    c.max_kl = n["budget"]["max_kl"].as<double>();
    c.min_top1 = n["budget"]["min_top1"].as<double>();
    c.drop = n["drop"].as<std::vector<int>>();
    if (n["sync_dtypes"])
      for (const char* d : {"bf16", "q8"})
        c.sync_dtypes.push_back({0, n["sync_dtypes"][d]["kl"].as<double>(), n["sync_dtypes"][d]["top1"].as<double>()});
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": not a lowsync calibration file (" + e.msg + "); expected keys model, tp, layers, order, prefix, budget, drop");
  }
  return c;
}

}  // namespace lowsync
