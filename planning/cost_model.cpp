#include "planning/cost_model.h"

#include <algorithm>
#include <cmath>

#include "io/error.h"
#include "mpi_comm/wire_bytes.h"
#include "planning/pipeline_round.h"
#include "planning/shares.h"

namespace lowsync {

namespace {

constexpr double kFloat = sizeof(float);
// What a split head's merge sends per logits row when it needs no whole rows: a LogitSummary
// (layers/logit_summary.h), five doubles.
constexpr double kSummaryBytes = 5 * sizeof(double);

// What one rank of a replica holds of every layer, in the units its costs need.
struct RankWork {
  double layer_parameters = 0;  // products' weights of one layer (attention + FFN)
  double q_dim = 0, kv_dim = 0, ffn = 0;  // summed over a decoupled rank's sub-blocks
  double streams = 1;           // residual streams it carries (a decoupled rank: one per sub-block)
};

RankWork work_of(const ModelConfig& m, const LayerShare& s) {
  RankWork w;
  w.layer_parameters = double(share_layer_parameters(m, s));
  if (!m.bp.enabled()) {
    w.q_dim = double(s.heads.count) * m.head_dim;
    w.kv_dim = double(s.kv_heads.count) * m.head_dim;
    w.ffn = s.ffn.count;
    return w;
  }
  w.streams = s.sub_blocks.count;
  for (int r = s.sub_blocks.begin; r < s.sub_blocks.end(); ++r) {
    w.q_dim += double(m.bp.heads[r]) * m.head_dim;
    w.kv_dim += double(m.bp.kv_heads[r]) * m.head_dim;
    w.ffn += m.bp.ffn[r];
  }
  return w;
}

// Seconds of `flops` of products over `rows` rows at a rank's measured rates: the prefill rate for
// large passes; for decode-sized passes, time interpolated linearly in the rows between the
// one-row rate (bandwidth-bound: the weights are read once whatever the rows) and the full-batch one.
double product_seconds(double flops_per_row, double rows, const MatmulRates& rate, int decode_rows) {
  if (flops_per_row <= 0 || rows <= 0) return 0;
  auto secs = [&](double gflops, double r) { return gflops > 0 ? flops_per_row * r / (gflops * 1e9) : 0; };
  if (rows > decode_rows || decode_rows <= 1) return secs(rate.prefill, rows);
  const double t1 = secs(rate.decode_one, 1), tb = secs(rate.decode_batch, decode_rows);
  return t1 + (tb - t1) * (rows - 1) / (decode_rows - 1);
}

struct PassShape {
  double tokens = 0;        // packed rows of the pass
  double sequences = 0;
  double new_per_seq = 0;   // tokens each sequence computes in this pass
  double context = 0;       // keys each new token attends to (mean)
  double logits_rows = 0;   // rows through the LM head
  bool sample = false;      // generate: each logits row is sampled
};

// One rank's compute seconds for one pass.
// `layers`: the rank's stage's; `head`: the share of the LM head's rows it computes (0: its stage is
// not the last); `sample_share`: the share of each logits row it samples or summarises (a split
// head that gathers whole rows samples all of them on every rank).
double rank_pass_seconds(const ModelConfig& m, const RankProfile& rp, const RankWork& w, const PassShape& p,
                         int decode_rows, double layers, double head, double sample_share) {
  const double L = layers, H = m.hidden, bw = std::max(rp.read_bytes_per_s, 1e6);
  double s = L * product_seconds(2 * w.layer_parameters, p.tokens, rp.layers, decode_rows);
  // Attention: a prefill computes the whole score matrix per sequence (2 products of q_dim x n x n);
  // a decode step reads every cached key and value once.
  if (p.new_per_seq > 1)
    s += L * product_seconds(4 * w.q_dim * p.new_per_seq, p.tokens, rp.layers, decode_rows);
  else
    s += L * p.sequences * 2 * p.context * w.kv_dim * kFloat / bw;
  // Element-wise work (norms, residual adds, activations, RoPE): a few reads and writes of each
  // activation per layer.
  s += L * p.tokens * (6 * H * w.streams + 2 * w.q_dim + 2 * w.kv_dim + 3 * w.ffn) * kFloat / bw;
  // The LM head (its rows of it), and sampling over each row's logits.
  if (m.is_decoder() && head > 0) {
    s += product_seconds(2 * double(m.vocab) * head * H, p.logits_rows, rp.head, decode_rows);
    if (p.sample) s += p.logits_rows * 3 * double(m.vocab) * sample_share * kFloat / bw;
  }
  return s;
}

// Seconds of one all-reduce of `bytes` over a measured group: interpolated between the measured
// message sizes that bracket it (time linear in bytes between them), and the fitted line only
// outside them. Why not the line everywhere: its relative-error fit is pinned by the many small
// sizes, and on a TCP link it missed the large ones by 45% (100 Mbit/s, 500 us: 1 MiB fitted at
// 70 ms, measured 126 ms), which is where a prefill's all-reduces (hundreds of KB) fall.
double all_reduce_seconds(const AllReduceLink& a, double bytes) {
  const auto& s = a.samples;
  if (s.size() < 2 || bytes < double(s.front().bytes)) return a.link.seconds(bytes);
  for (size_t i = 1; i < s.size(); ++i)
    if (bytes <= double(s[i].bytes)) {
      const double x0 = double(s[i - 1].bytes), x1 = double(s[i].bytes);
      return s[i - 1].seconds + (s[i].seconds - s[i - 1].seconds) * (bytes - x0) / (x1 - x0);
    }
  return s.back().seconds + (a.link.bytes_per_s > 0 ? (bytes - double(s.back().bytes)) / a.link.bytes_per_s : 0);
}

// Seconds of one sync of `values` activations over a group of `ranks`: fp32 is the measured
// all-reduce of their bytes. A compressed sync (parallel.sync_dtype; its two ways in
// mpi_comm/wire_bytes.h) is charged as the fp32 all-reduce that puts as many bytes on the wire per
// rank as it does; the rounds are alike (log2 P for the small syncs that gather, as recursive
// doubling; for large ones 1 + log2 P or more, against Rabenseifner's 2 log2 P).
double sync_seconds(const AllReduceLink& a, int ranks, SyncDType d, double values) {
  const double fp32 = values * kFloat;
  if (d == SyncDType::F32 || ranks <= 1) return all_reduce_seconds(a, fp32);
  const double wire = compressed_allreduce_wire_bytes(ranks, std::llround(values), d);
  const double fp32_wire = allreduce_wire_bytes(ranks, std::llround(fp32));
  return all_reduce_seconds(a, fp32_wire > 0 ? fp32 * wire / fp32_wire : fp32);
}

// The fitted point-to-point link between two ranks (or between any neighbours the profile
// measured, links being alike), else a free one.
LinkModel point_to_point(const Profile& profile, int from, int to) {
  const PointToPointLink* any = nullptr;
  for (const PointToPointLink& l : profile.point_to_point) {
    if ((l.from == from && l.to == to) || (l.from == to && l.to == from)) return l.link;
    any = &l;
  }
  return any ? any->link : LinkModel{};
}

// One stage's activations to the next (or a streamed layer from its holder).
double send_seconds(const Profile& profile, int from, int to, double bytes) {
  return point_to_point(profile, from, to).seconds(bytes);
}

// A pass's shape for one of `parts` micro-batches.
PassShape micro(PassShape p, double parts) {
  p.tokens /= parts;
  p.sequences /= parts;
  p.logits_rows /= parts;
  return p;
}

const AllReduceLink* measured_group(const Profile& profile, const std::vector<int>& ranks) {
  for (const AllReduceLink& a : profile.all_reduce)
    if (a.ranks == ranks) return &a;
  return nullptr;
}

}  // namespace

Prediction predict(const Plan& plan, const ModelConfig& m, const Profile& profile, const Workload& work) {
  if (profile.world != plan.world || static_cast<int>(profile.ranks.size()) != plan.world)
    throw UserError("profile of " + std::to_string(profile.world) + " ranks cannot predict a plan for " +
                    std::to_string(plan.world) + "; profile again under the same mpirun");
  const bool generate = work.new_tokens > 0;
  const double B = std::max(work.batch_sequences, 1), n = std::max(work.prompt_tokens, 1);
  const int decode_rows = std::max(profile.decode_rows, 1);

  // Logits rows of a prefill: generate samples each prompt's last token; score computes the head only
  // at its targets' positions (jobs/score.cpp), not at every token.
  const double scored = work.scored_tokens > 0 ? std::min<double>(work.scored_tokens, n) : n;
  PassShape prefill{B * n, B, n, n / 2, generate ? B : (m.is_decoder() ? B * scored : 0), generate};
  PassShape decode{B, B, 1, n + work.new_tokens / 2.0, B, true};
  PassShape prefill_one{n, 1, n, n / 2, generate ? 1 : (m.is_decoder() ? scored : 0), generate};
  PassShape decode_one{1, 1, 1, n + work.new_tokens / 2.0, 1, true};

  Prediction out;
  const double token_bytes = double(m.hidden) * kFloat;  // a pipeline hand-over
  const double sync_token_bytes = double(m.hidden) * sync_bytes_per_value(plan.sync_dtype);  // a sync, compressed
  out.bytes_per_token = plan.syncs_per_pass(m) * sync_token_bytes;  // summed over stages, as a rank of each sends
  // A split head's merge: each rank's summary of a logits row, or its rows' logits when whole rows
  // are gathered (the rank with the most rows), per logits row (one per new token).
  double head_row_bytes = 0;
  if (plan.head_split()) {
    int most = 0;
    for (const Span& h : plan.head) most = std::max(most, h.count);
    head_row_bytes = work.gather_rows ? most * kFloat : kSummaryBytes;
    if (generate) out.bytes_per_token += head_row_bytes;
  }
  double rows_per_s = 0, latency = 0;
  const double M = plan.micro_batches;
  for (int replica = 0; replica < plan.dp; ++replica) {
    // One micro-batch's pass through stage s: its slowest rank's compute, every sync's transfer
    // of the pass's activations, and the hand-over to the next stage.
    auto stage_pass = [&](int st, const PassShape& p, double* compute = nullptr, double* comm = nullptr) {
      const int first = (replica * plan.pp + st) * plan.group;
      std::vector<int> ranks;
      for (int r = 0; r < plan.group; ++r) ranks.push_back(first + r);
      const AllReduceLink* link = nullptr;
      if (plan.group > 1 && !(link = measured_group(profile, ranks)))
        throw UserError("the profile has no all-reduce measurement for ranks " + std::to_string(ranks.front()) + ".." +
                        std::to_string(ranks.back()) + "; profile again");
      double slowest = 0;
      for (int r = 0; r < plan.group; ++r) {
        const RankProfile& rp = profile.ranks[ranks[r]];
        const RankWork w = work_of(m, plan.shares[r]);
        const double head = st + 1 < plan.pp ? 0 : double(plan.head_of(ranks[r], m.vocab).count) / m.vocab;
        const double sample = plan.head_split() && !work.gather_rows ? head : 1;
        const double compute = rank_pass_seconds(m, rp, w, p, decode_rows, plan.stages[st].count, head, sample);
        // Layers beyond memory.limit are copied out of the page cache once per pass, by a thread that
        // overlaps the copy with compute (a copy reads and writes: half the read bandwidth); under
        // memory.pool: peer they are sent by their holder instead, one message per layer over the
        // link between the two ranks (its latency and bandwidth, as the profile fitted them).
        const int streamed = plan.stages[st].count - plan.resident_of(ranks[r]);
        const double layer_bytes = w.layer_parameters * weights_dtype_bytes(plan.limits.weights);
        const int holder = plan.holder_of(ranks[r]);
        const double stream = holder >= 0 ? streamed * send_seconds(profile, holder, ranks[r], layer_bytes)
                                          : streamed * layer_bytes / (std::max(rp.read_bytes_per_s, 1e6) / 2);
        slowest = std::max(slowest, std::max(compute, stream));
      }
      double c = link ? plan.syncs_in_stage(st, m) * sync_seconds(*link, plan.group, plan.sync_dtype, p.tokens * m.hidden) : 0;
      // A split head's all-gather, timed as an all-reduce of the gathered bytes (the same latency
      // per step; ring all-gather and all-reduce send about as many bytes for that size).
      if (link && plan.head_split() && st + 1 == plan.pp && p.logits_rows > 0)
        c += all_reduce_seconds(*link, p.logits_rows * head_row_bytes * plan.group);
      // The hand-over to the next stage counts in the step's communication, but a non-blocking
      // send does not keep the stage busy: the pipeline's formula places it (pipeline_round.h).
      const double hand_over = st + 1 < plan.pp ? send_seconds(profile, first, first + plan.group, p.tokens * token_bytes) : 0;
      if (compute) *compute = std::max(*compute, slowest);
      if (comm) *comm = std::max(*comm, c + hand_over);
      return slowest + c;
    };
    // A pass of the whole batch in M micro-batches through the stages (planning/pipeline_round.h):
    // a prefill fills the pipeline and drains it; a decode round is paced by the slowest stage's
    // M passes, unless a micro-batch's trip through every stage (and its tokens' way back) takes
    // longer.
    auto pass = [&](const PassShape& whole, bool decode_round, double* compute = nullptr, double* comm = nullptr) {
      const double parts = std::min(M, std::max(1.0, whole.sequences));
      const PassShape p = micro(whole, parts);
      PipelinePass one;
      for (int st = 0; st < plan.pp; ++st) {
        one.stage_s.push_back(stage_pass(st, p, compute, comm));
        if (st + 1 == plan.pp) break;
        const int from = (replica * plan.pp + st) * plan.group;
        const LinkModel link = point_to_point(profile, from, from + plan.group);
        const double bytes = p.tokens * token_bytes;
        one.hand_over_s.push_back(link.seconds(bytes));
        one.link_s.push_back(link.bytes_per_s > 0 ? bytes / link.bytes_per_s : 0);
      }
      if (!decode_round) return pipeline_fill_seconds(one, parts);
      if (plan.pp > 1)
        one.token_return_s = send_seconds(profile, replica * plan.pp * plan.group,
                                          (replica * plan.pp + plan.pp - 1) * plan.group, 4 * p.sequences);
      return pipeline_round_seconds(one, parts);
    };
    const double t_prefill = pass(prefill, false, generate ? nullptr : &out.compute_s, generate ? nullptr : &out.comm_s);
    const double t_decode = generate ? pass(decode, true, &out.compute_s, &out.comm_s) : 0;
    const double t_decode_one = generate ? pass(decode_one, true) : 0;
    out.prefill_pass_s = std::max(out.prefill_pass_s, t_prefill);
    out.decode_step_s = std::max(out.decode_step_s, t_decode);
    out.decode_step_one_s = std::max(out.decode_step_one_s, t_decode_one);
    // A batch: its prefill, then one step per new token (rows finishing early are not modelled).
    rows_per_s += B / (t_prefill + work.new_tokens * t_decode);
    latency = std::max(latency, pass(prefill_one, false) + work.new_tokens * t_decode_one);
  }
  out.rows_per_s = rows_per_s;
  out.sequence_latency_s = latency;
  return out;
}

}  // namespace lowsync
