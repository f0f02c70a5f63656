#include "planning/fidelity.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <sstream>

#include "io/error.h"
#include "io/files.h"

namespace lowsync {

Fidelity::Fidelity() : mean_cosine(std::nan("")), mean_kl(std::nan("")), top1(std::nan("")) {}

std::string Fidelity::path_in(const std::string& checkpoint_dir) {
  return (std::filesystem::path(checkpoint_dir) / "fidelity.yaml").string();
}

bool Fidelity::exists_in(const std::string& checkpoint_dir) { return std::filesystem::exists(path_in(checkpoint_dir)); }

Fidelity Fidelity::load(const std::string& path) {
  const std::string expected =
      "; expected lowsync_fidelity: 1, base: {path, config_digest}, metric: mean_cosine or mean_kl and its value "
      "(python -m decoupled fidelity BASE CHECKPOINT writes it)";
  YAML::Node n;
  try {
    n = YAML::Load(read_regular_file(path, "the fidelity file"));
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": not valid YAML (" + e.msg + ")" + expected);
  }
  Fidelity f;
  try {
    if (!n.IsMap() || n["lowsync_fidelity"].as<int>(0) != 1) throw UserError(path + ": not a fidelity file" + expected);
    f.base_path = n["base"]["path"].as<std::string>();
    f.base_digest = n["base"]["config_digest"].as<std::string>();
    const std::string metric = n["metric"].as<std::string>();
    if (metric != "mean_cosine" && metric != "mean_kl")
      throw UserError(path + ": metric is '" + metric + "'" + expected);
    if (n["mean_cosine"]) f.mean_cosine = n["mean_cosine"].as<double>();
    if (n["mean_kl"]) f.mean_kl = n["mean_kl"].as<double>();
    if (n["top1_agreement"]) f.top1 = n["top1_agreement"].as<double>();
    if (std::isnan(metric == "mean_cosine" ? f.mean_cosine : f.mean_kl))
      throw UserError(path + ": metric is " + metric + " but the file has no '" + metric + "' value" + expected);
    f.rows = n["rows"].as<int>(0);
    f.texts = n["texts"].as<std::string>("");
  } catch (const YAML::Exception& e) {
    throw UserError(path + ": not a lowsync fidelity file (" + e.msg + ")" + expected);
  }
  return f;
}

std::string Fidelity::describe() const {
  std::ostringstream s;
  s.precision(4);
  if (!std::isnan(mean_cosine)) s << "mean cosine " << mean_cosine;
  if (!std::isnan(mean_kl)) s << (std::isnan(mean_cosine) ? "" : ", ") << "mean KL " << mean_kl;
  if (!std::isnan(top1)) s << ", top-1 " << top1;
  s << " on " << rows << " rows";
  return s.str();
}

}  // namespace lowsync
