#include "planning/shares.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "io/error.h"

namespace lowsync {

namespace {

// `total` units divided among ranks in proportion to `weight`, each getting at least `minimum`:
// floors first, then the largest remainders (ties to the lower rank, so equal weights give the
// first ranks the spare units).
std::vector<int> proportional_counts(int total, const std::vector<double>& weight, int minimum) {
  const int n = static_cast<int>(weight.size());
  const double sum = std::accumulate(weight.begin(), weight.end(), 0.0);
  std::vector<double> target(n);
  std::vector<int> count(n);
  for (int r = 0; r < n; ++r) {
    target[r] = sum > 0 ? total * weight[r] / sum : double(total) / n;
    count[r] = std::max(minimum, static_cast<int>(std::floor(target[r] + 1e-9)));
  }
  int left = total - std::accumulate(count.begin(), count.end(), 0);
  while (left > 0) {  // the rank furthest below its target gets the next unit
    int best = 0;
    for (int r = 1; r < n; ++r)
      if (target[r] - count[r] > target[best] - count[best] + 1e-9) best = r;
    ++count[best];
    --left;
  }
  while (left < 0) {  // minimums overshot: take from the rank furthest above its target
    int best = -1;
    for (int r = 0; r < n; ++r)
      if (count[r] > minimum && (best < 0 || count[r] - target[r] > count[best] - target[best] + 1e-9)) best = r;
    --count[best];
    ++left;
  }
  return count;
}

int64_t ffn_parameters_per_column(const ModelConfig& m) { return int64_t(m.hidden) * (m.gated_ffn() ? 3 : 2); }

int64_t attention_parameters(const ModelConfig& m, int heads, int kv_heads) {
  return int64_t(m.hidden) * m.head_dim * (2 * int64_t(heads) + 2 * int64_t(kv_heads));  // q, o; k, v
}

void check_speeds(const ModelConfig& model, const std::vector<double>& speed) {
  if (speed.empty()) throw UserError(model.dir + ": a replica needs at least one rank");
  for (double s : speed)
    if (!(s > 0) || !std::isfinite(s))
      throw UserError("parallel.speeds: every rank's relative speed must be a positive number");
}

}  // namespace

std::vector<LayerShare> tensor_shares(const ModelConfig& model, const std::vector<double>& speed) {
  check_speeds(model, speed);
  const int n = static_cast<int>(speed.size());
  const int group = model.n_heads / model.n_kv_heads;
  std::vector<int> heads;
  if (model.n_kv_heads >= n) {
    heads = proportional_counts(model.n_kv_heads, speed, 1);
    for (int& h : heads) h *= group;
  } else if (model.n_heads >= n) {
    heads = proportional_counts(model.n_heads, speed, 1);
  } else {
    throw UserError(model.dir + ": parallel.tp = " + std::to_string(n) + " exceeds the model's " +
                    std::to_string(model.n_heads) + " attention heads; every rank needs at least one head");
  }

  std::vector<LayerShare> shares(n);
  int64_t attention_total = 0;
  for (int r = 0, begin = 0; r < n; begin += heads[r], ++r) {
    const int end = begin + heads[r];
    const int kv_begin = begin / group, kv_end = (end + group - 1) / group;
    shares[r].heads = {begin, heads[r]};
    shares[r].kv_heads = {kv_begin, kv_end - kv_begin};
    attention_total += attention_parameters(model, heads[r], kv_end - kv_begin);
  }

  // FFN columns: each rank's parameters in proportion to its speed.
  const int I = model.intermediate;
  const int64_t per_column = ffn_parameters_per_column(model);
  const double total = double(attention_total) + double(per_column) * I;
  const double speed_sum = std::accumulate(speed.begin(), speed.end(), 0.0);
  std::vector<double> wanted(n);
  for (int r = 0; r < n; ++r) {
    const double attention = double(attention_parameters(model, shares[r].heads.count, shares[r].kv_heads.count));
    wanted[r] = std::max(0.0, (total * speed[r] / speed_sum - attention) / double(per_column));
  }
  if (std::accumulate(wanted.begin(), wanted.end(), 0.0) <= 0) wanted = speed;
  // Columns in multiples of the grain, unless single columns hit every rank's want exactly and the
  // grain cannot (an even split of a width such as 48 over 2 ranks stays 24 + 24).
  auto split_columns = [&](int grain) {
    std::vector<int> count = proportional_counts(I / grain, wanted, 1);
    for (int& c : count) c *= grain;
    count.back() += I - std::accumulate(count.begin(), count.end(), 0);  // a width not a multiple of the grain
    return count;
  };
  auto exact = [&](const std::vector<int>& count) {
    const double scale = I / std::accumulate(wanted.begin(), wanted.end(), 0.0);
    for (int r = 0; r < n; ++r)
      if (std::abs(count[r] - wanted[r] * scale) > 1e-6) return false;
    return true;
  };
  std::vector<int> columns = split_columns(1);
  if (I / kFfnGrain >= n) {
    const std::vector<int> grained = split_columns(kFfnGrain);
    if (exact(grained) || !exact(columns)) columns = grained;
  }
  for (int r = 0, begin = 0; r < n; begin += columns[r], ++r) shares[r].ffn = {begin, columns[r]};
  return shares;
}

std::vector<LayerShare> block_shares(const ModelConfig& model, const std::vector<double>& speed) {
  check_speeds(model, speed);
  const int n = static_cast<int>(speed.size()), P = model.bp.sub_blocks;
  if (n > P)
    throw UserError(model.dir + ": parallel.bp = " + std::to_string(n) + " exceeds the decoupled model's " +
                    std::to_string(P) + " sub-blocks per layer; every rank needs at least one");
  const std::vector<int> count = proportional_counts(P, speed, 1);
  std::vector<LayerShare> shares(n);
  for (int r = 0, begin = 0; r < n; begin += count[r], ++r) shares[r].sub_blocks = {begin, count[r]};
  return shares;
}

void check_shares(const ModelConfig& model, bool decoupled, const std::vector<LayerShare>& shares,
                  const std::string& where) {
  if (shares.empty()) throw UserError(where + ": no ranks");
  auto fail = [&](size_t r, const std::string& what) {
    throw UserError(where + ": rank " + std::to_string(r) + ": " + what);
  };
  // `span` of every rank must continue where the previous one ended, be non-empty, and the last
  // must end at `total`.
  auto partition = [&](Span LayerShare::*span, int total, const char* what) {
    int next = 0;
    for (size_t r = 0; r < shares.size(); ++r) {
      const Span& s = shares[r].*span;
      if (s.begin != next)
        fail(r, std::string(what) + " begin at " + std::to_string(s.begin) + "; expected " + std::to_string(next) +
                    " (shares must be contiguous and in rank order)");
      if (s.count < 1) fail(r, std::string("no ") + what + "; every rank needs at least one");
      next = s.end();
    }
    if (next != total)
      throw UserError(where + ": the shares cover " + std::to_string(next) + " " + what + " but the model has " +
                      std::to_string(total));
  };
  if (decoupled) {
    partition(&LayerShare::sub_blocks, model.bp.sub_blocks, "sub-blocks");
    return;
  }
  partition(&LayerShare::heads, model.n_heads, "heads");
  partition(&LayerShare::ffn, model.intermediate, "FFN columns");
  const int group = model.n_heads / model.n_kv_heads;
  for (size_t r = 0; r < shares.size(); ++r) {
    const Span& q = shares[r].heads;
    const Span& kv = shares[r].kv_heads;
    const int begin = q.begin / group, end = (q.end() + group - 1) / group;
    if (kv.begin != begin || kv.end() != end)
      fail(r, "kv heads [" + std::to_string(kv.begin) + ", " + std::to_string(kv.end()) + ") but query heads [" +
                  std::to_string(q.begin) + ", " + std::to_string(q.end()) + ") read kv heads [" +
                  std::to_string(begin) + ", " + std::to_string(end) + ")");
  }
}

std::vector<Span> head_shares(const ModelConfig& model, const std::vector<double>& speed) {
  check_speeds(model, speed);
  const int n = static_cast<int>(speed.size());
  if (model.vocab < n)
    throw UserError(model.dir + ": a vocabulary of " + std::to_string(model.vocab) + " rows cannot be split over " +
                    std::to_string(n) + " ranks (parallel.split_head)");
  const int grain = model.vocab >= kFfnGrain * n ? kFfnGrain : 1;
  const std::vector<int> units = proportional_counts((model.vocab + grain - 1) / grain, speed, 1);
  std::vector<Span> head;
  for (int r = 0, begin = 0; r < n; ++r) {
    const int count = std::min(units[r] * grain, model.vocab - begin);
    head.push_back({begin, count});
    begin += count;
  }
  return head;
}

void check_head_shares(const ModelConfig& model, int group, const std::vector<Span>& head, const std::string& where) {
  if (head.empty()) return;
  if (!model.is_decoder())
    throw UserError(where + ": the head is split over ranks but " + model.architecture + " (" + model.dir +
                    ") has no output head; leave parallel.split_head off");
  if (static_cast<int>(head.size()) != group)
    throw UserError(where + ": the head is split into " + std::to_string(head.size()) + " ranges for a group of " +
                    std::to_string(group) + " ranks");
  int next = 0;
  for (size_t r = 0; r < head.size(); ++r) {
    if (head[r].begin != next || head[r].count < 1)
      throw UserError(where + ": rank " + std::to_string(r) + ": head rows [" + std::to_string(head[r].begin) + ", " +
                      std::to_string(head[r].end()) + "); the ranks' head rows must be consecutive, in order, at " +
                      "least one each");
    next = head[r].end();
  }
  if (next != model.vocab)
    throw UserError(where + ": the head rows end at " + std::to_string(next) + " but the vocabulary has " +
                    std::to_string(model.vocab) + " rows");
}

int64_t share_layer_parameters(const ModelConfig& model, const LayerShare& share) {
  const int64_t per_column = ffn_parameters_per_column(model);
  if (!model.bp.enabled())
    return attention_parameters(model, share.heads.count, share.kv_heads.count) + per_column * share.ffn.count;
  int64_t n = 0;
  for (int r = share.sub_blocks.begin; r < share.sub_blocks.end(); ++r)
    n += attention_parameters(model, model.bp.heads[r], model.bp.kv_heads[r]) + per_column * model.bp.ffn[r];
  return n;
}

}  // namespace lowsync
