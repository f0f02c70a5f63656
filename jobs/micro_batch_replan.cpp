#include "jobs/micro_batch_replan.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "io/error.h"
#include "io/log.h"

namespace lowsync {

namespace {

// LOWSYNC_MICRO_BATCHES_AT=B:M: at the replica's batch B (1 = its first), M micro-batches.
std::pair<int64_t, int> forced_change() {
  const char* s = std::getenv("LOWSYNC_MICRO_BATCHES_AT");
  if (!s || !*s) return {-1, 0};
  long long batch = 0;
  int count = 0;
  if (std::sscanf(s, "%lld:%d", &batch, &count) != 2 || batch < 1 || count < 1)
    throw UserError(std::string("LOWSYNC_MICRO_BATCHES_AT is '") + s + "'; expected BATCH:COUNT, both >= 1");
  return {batch, count};
}

}  // namespace

MicroBatchReplan::MicroBatchReplan(ParallelGroups& groups, int slots, int current)
    : MicroBatchReplan(groups, slots, current, forced_change()) {}

MicroBatchReplan::MicroBatchReplan(ParallelGroups& groups, int slots, int current, std::pair<int64_t, int> forced)
    : groups_(groups),
      // The generator runs at most one micro-batch per slot.
      planner_(groups.stages, slots, std::min(current, slots), forced.first, forced.second) {}

void MicroBatchReplan::measured(const ContinuousGenerator& generator) {
  const ContinuousGenerator::PassRecord& p = generator.last_pass();
  if (p.passed) fit_.add(p.decoding, p.prefill_tokens, p.compute_s);
  if (!groups_.is_leader()) return;
  if (const ContinuousGenerator::RoundRecord* r = generator.round_just_ended())
    planner_.measured_round(r->micro_batches, r->rows, r->seconds, r->decode_only);
}

ContinuousGenerator::Finished MicroBatchReplan::between_batches(ContinuousGenerator& generator, double now_s,
                                                                 int64_t rows_left) {
  ++batches_;
  // This stage's pass cost; where its passes do not pin a part yet, their mean pass as fixed cost.
  const PassCost prior{fit_.passes() > 0 ? fit_.seconds() / fit_.passes() : 0, 0, 0};
  const PassCost mine = fit_.cost(prior);
  const double send[4] = {mine.fixed, mine.per_row, mine.per_token, double(fit_.passes())};
  std::vector<double> all(4 * groups_.pp.size());
  groups_.pp.all_gather(send, 4, all.data());  // every stage's pass cost, for the leader to decide on
  int64_t count = generator.micro_batches();
  if (groups_.is_leader()) {
    std::vector<PassCost> stages;
    std::vector<int64_t> passes;
    for (int s = 0; s < groups_.pp.size(); ++s) {
      stages.push_back({all[4 * s], all[4 * s + 1], all[4 * s + 2]});
      passes.push_back(static_cast<int64_t>(all[4 * s + 3]));
    }
    count = planner_.decide(batches_, stages, passes, generator.rows_held(), rows_left, now_s);
    if (count != generator.micro_batches() && !planner_.decisions().empty() && groups_.world.rank() == 0)
      log::info("lowsync: micro-batches %d -> %lld at batch %lld: %s", generator.micro_batches(),
                static_cast<long long>(count), static_cast<long long>(batches_), planner_.decisions().back().why.c_str());
  }
  groups_.replica.broadcast(&count, sizeof count, 0);  // the leader's decision, to every stage of the replica
  if (count == generator.micro_batches()) return {};
  return generator.set_micro_batches(static_cast<int>(count));
}

std::unique_ptr<MicroBatchReplan> make_micro_batch_replan(const JobConfig& job, ParallelGroups& groups, int current) {
  if (job.task != "generate" || !job.batch.continuous || groups.stages < 2) return nullptr;
  if (job.parallel.micro_batches != 0 || !job.parallel.plan.empty()) return nullptr;
  return std::make_unique<MicroBatchReplan>(groups, job.batch.max_sequences, current);
}

}  // namespace lowsync
