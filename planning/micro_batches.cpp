#include "planning/micro_batches.h"

#include <algorithm>
#include <cstdio>

namespace lowsync {

MicroBatchChoice choose_micro_batches(const Plan& plan, const ModelConfig& model, const Profile& profile,
                                      const Workload& work) {
  MicroBatchChoice out;
  out.chosen = plan.micro_batches;
  if (plan.pp < 2) return out;
  // Beyond one sequence per micro-batch nothing changes (the cost model splits at most that far); 4
  // per stage covers a link slow enough that a trip takes several stages' passes.
  const int most = std::max(1, std::min(work.batch_sequences, 4 * plan.pp));
  double best = -1;
  for (int m = 1; m <= most; ++m) {
    Plan p = plan;
    p.micro_batches = m;
    const double rows_per_s = predict(p, model, profile, work).rows_per_s;
    out.compared.push_back({m, rows_per_s});
    if (rows_per_s > best) best = rows_per_s, out.chosen = m;
  }
  return out;
}

int micro_batches_without_profile(int pp) { return std::max(pp, 1); }

std::string describe(const MicroBatchChoice& choice) {
  if (choice.compared.empty()) return std::to_string(choice.chosen);
  std::string s = std::to_string(choice.chosen) + " of 1-" + std::to_string(choice.compared.back().count) + " (rows/s";
  char one[64];
  for (const MicroBatchOption& o : choice.compared) {
    std::snprintf(one, sizeof one, "%s %d: %.4g%s", o.count == 1 ? "" : ",", o.count, o.rows_per_s,
                  o.count == choice.chosen ? "*" : "");
    s += one;
  }
  return s + ")";
}

}  // namespace lowsync
