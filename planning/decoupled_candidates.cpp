#include "planning/decoupled_candidates.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>

#include "io/error.h"
#include "planning/fidelity.h"

namespace lowsync {

namespace {

// What a decoupled model keeps of its base: the shapes a conversion never changes.
bool same_shapes(const ModelConfig& a, const ModelConfig& b) {
  return a.family == b.family && a.hidden == b.hidden && a.n_layers == b.n_layers && a.n_heads == b.n_heads &&
         a.n_kv_heads == b.n_kv_heads && a.head_dim == b.head_dim && a.intermediate == b.intermediate &&
         a.vocab == b.vocab;
}

// Syncs per forward pass: 2 per coupled layer (tensor-parallel) + 1 per segment of decoupled layers.
int syncs_per_pass(const ModelConfig& m) {
  int n = 0;
  for (const DecoupledSpec::Segment& s : m.bp.segments(m.n_layers)) n += s.coupled ? 2 : 1;
  return n;
}

std::string number(double v) {
  std::ostringstream s;
  s.precision(4);
  s << v;
  return s.str();
}

// The checkpoint's fidelity, after checking that it is a decoupled model of the job's model and
// has what the budget needs. Without a file (no budget set) the fidelity is unknown (NaN).
Fidelity checked_fidelity(const JobConfig& job, const ModelConfig& model, const ModelConfig& ckpt) {
  const std::string& dir = ckpt.dir;
  const std::string what = job.path + ": parallel.decoupled.from: " + dir;
  if (!ckpt.bp.enabled())
    throw UserError(what + " is not a decoupled checkpoint (its config.json has no 'bp'); expected one made from " +
                    model.dir + " by python -m decoupled convert");
  if (!same_shapes(ckpt, model))
    throw UserError(what + " has other shapes (layers, hidden, heads, FFN, vocabulary) than the job's model " +
                    model.dir + "; expected a decoupled checkpoint made from it");
  const DecoupledOptions& opt = job.parallel.decoupled;
  if (!Fidelity::exists_in(dir)) {
    if (opt.budgeted())
      throw UserError(what + " has no fidelity.yaml, which parallel.decoupled.budget needs; expected one from " +
                      "python -m decoupled distill, or measure it: python -m decoupled fidelity " + model.dir + " " +
                      dir);
    return Fidelity();
  }
  const std::string file = Fidelity::path_in(dir);
  const Fidelity f = Fidelity::load(file);
  // The digest tells shapes apart, the path models of one shape (no weight is hashed).
  namespace fs = std::filesystem;
  if (f.base_digest != config_digest(model) || fs::weakly_canonical(f.base_path) != fs::weakly_canonical(model.dir))
    throw UserError(file + ": measured against " + f.base_path + " (config digest " + f.base_digest +
                    "), not the job's model " + model.dir + " (" + config_digest(model) +
                    "); expected a decoupled checkpoint of the job's model (if it is one, moved: python -m decoupled "
                    "fidelity " + model.dir + " " + dir + " measures it again)");
  if (opt.min_cosine >= 0 && std::isnan(f.mean_cosine))
    throw UserError(file + ": has no mean_cosine (" + f.describe() +
                    ") for parallel.decoupled.budget.min_cosine; a decoder's budget is max_kl");
  if (opt.max_kl >= 0 && std::isnan(f.mean_kl))
    throw UserError(file + ": has no mean_kl (" + f.describe() +
                    ") for parallel.decoupled.budget.max_kl; an encoder's budget is min_cosine");
  return f;
}

// Why the fidelity is outside the budget; empty when within.
std::string outside_budget(const DecoupledOptions& opt, const Fidelity& f) {
  if (opt.min_cosine >= 0 && f.mean_cosine < opt.min_cosine)
    return "mean cosine " + number(f.mean_cosine) + " < budget.min_cosine " + number(opt.min_cosine);
  if (opt.max_kl >= 0 && f.mean_kl > opt.max_kl)
    return "mean KL " + number(f.mean_kl) + " > budget.max_kl " + number(opt.max_kl);
  return "";
}

}  // namespace

void add_decoupled_candidates(const JobConfig& job, const ModelConfig& model, const Profile& profile,
                              const Workload& work, const MemoryBudget& memory, PlannerResult& result) {
  const DecoupledOptions& opt = job.parallel.decoupled;
  if (opt.from.empty()) return;
  if (model.bp.enabled())
    throw UserError(job.path + ": parallel.decoupled.from needs the ordinary model its checkpoints were made from as "
                    "'model'; " + model.dir + " is itself decoupled");
  for (const std::string& dir : opt.from) {
    ModelConfig ckpt = load_model_config(dir);
    const Fidelity fidelity = checked_fidelity(job, model, ckpt);
    const std::string name = std::filesystem::path(dir).lexically_normal().filename().string();
    std::ostringstream shape;
    shape << "P=" << ckpt.bp.sub_blocks << " k=" << ckpt.bp.sync_every << " coupled " << ckpt.bp.coupled.size() << "/"
          << ckpt.n_layers << ", " << syncs_per_pass(ckpt) << " syncs";
    const std::string over = outside_budget(opt, fidelity);
    if (!over.empty()) {
      result.refused.push_back(dir + " (" + shape.str() + "): " + fidelity.describe() + "; " + over);
      continue;
    }
    // The checkpoint planned as a model of its own: no SPD (a calibration is of the job's model),
    // no stated plan, nothing more to choose from.
    JobConfig own = job;
    own.parallel.decoupled = {};
    own.parallel.spd = {};
    own.parallel.plan.clear();
    own.parallel.auto_plan = true;
    PlannerResult planned = enumerate_candidates(own, ckpt, profile, work, memory);
    const int index = static_cast<int>(result.checkpoints.size());
    result.checkpoints.push_back(std::move(ckpt));
    std::set<std::string> seen;  // P sub-blocks on P ranks cannot follow speeds: "speed-proportional" repeats "even"
    for (Candidate& c : planned.candidates) {
      if (c.plan.group == 1) continue;  // every sub-block on one rank: the model's own dp, less exact
      if (!seen.insert(c.plan.describe()).second) continue;
      c.checkpoint = index;
      c.kl = fidelity.mean_kl;
      c.top1 = fidelity.top1;
      c.cosine = fidelity.mean_cosine;
      c.label += ", " + name + " (" + shape.str() + (std::isnan(c.cosine) ? "" : ", cos " + number(c.cosine)) + ")";
      result.candidates.push_back(std::move(c));
    }
  }
}

ModelConfig model_of_plan(const Plan& plan, const JobConfig& job, const ModelConfig& job_model) {
  namespace fs = std::filesystem;
  for (const std::string& dir : job.parallel.decoupled.from)
    if (fs::weakly_canonical(dir) == fs::weakly_canonical(plan.model)) return load_model_config(dir);
  return job_model;
}

}  // namespace lowsync
