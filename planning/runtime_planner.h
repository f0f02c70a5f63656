#pragma once
// The runtime planner (`plan.runtime: true`): while a data-parallel generate job runs, it decides
// between batches whether the rows not yet handed out still go to the replicas one batch at a time
// (dp), or whether the replicas, once the rows they hold have finished, join into one
// tensor-parallel group over every rank that generates the rest (tp). The classic case is a job's
// tail: while many prompts wait, dp keeps every rank busy without a sync; when a few long rows are
// left, dp runs them on one rank each while the others idle, and tp splits them over all ranks.
//
// Every rank of a dp job holds the whole model, so the tp group needs no new weights: each rank
// computes its tp share from views of what it holds (layers/weight_views.h). The switch is one-way
// (a row in flight keeps its replica's KV cache until it ends). Its first decision, before any
// batch is handed out, is the whole job's plan: dp, tp from the start (no batch goes to a replica),
// or dp and a later switch (looked at again at every hand-out).
//
// While the mode is dp it also sizes each hand-out: how many rows of the next batch a replica
// takes into its decode batch (rows in flight). Near the end of a job a whole batch on one replica
// can outlast everything else while the other replicas idle; handing out fewer rows spreads the
// last rows over the replicas (hand_out_rows).
//
// Pure data: jobs/ feeds it the passes it measures and asks it before each hand-out; it answers
// with a mode and a size and keeps a record of every change of mode and every smaller hand-out,
// with the remaining time it predicted, for the run report.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "planning/cost_model.h"

namespace lowsync {

enum class RuntimeMode { DataParallel, TensorParallel };
const char* runtime_mode_name(RuntimeMode m);  // "dp" | "tp"

// Seconds of one continuous-batching pass of a group (a replica, or the tp group) with
// `rows` rows decoding and `tokens` prompt tokens starting: fixed + per_row x rows + per_token x tokens.
struct PassCost {
  double fixed = 0, per_row = 0, per_token = 0;
  double seconds(double rows, double tokens) const { return fixed + per_row * rows + per_token * tokens; }
};

// The measured passes of one mode, fitted: decode-only passes by least squares in their rows;
// the prompt tokens' cost from passes with prefill, after their decode rows' share.
class PassFit {
 public:
  void add(int decode_rows, int64_t prefill_tokens, double seconds);
  // The fit where the measurements pin it (two distinct decode row counts; some prefill), `prior` elsewhere.
  PassCost cost(const PassCost& prior) const;
  int64_t passes() const { return passes_; }
  double seconds() const { return seconds_; }

 private:
  double n_ = 0, sx_ = 0, sy_ = 0, sxx_ = 0, sxy_ = 0;  // decode-only passes: rows x, seconds y
  int64_t min_rows_ = -1, max_rows_ = -1;
  std::vector<std::pair<double, double>> prefills_;  // (decode rows, seconds per prompt token) pending the fit
  double prefill_tokens_ = 0;
  int64_t passes_ = 0;
  double seconds_ = 0;
};

// Rows as the planner sees them: the prompt tokens and the new tokens they may make at most
// (max_new_tokens within the model's positions; a stop token may end a row sooner).
struct RowsWork {
  double rows = 0, prompt_tokens = 0, new_tokens = 0, longest = 0;  // longest: one row's new tokens, at most
  void add(int64_t prompt, int64_t new_tokens);
  void add(const RowsWork& w);
  RowsWork scaled(double f) const { return {rows, prompt_tokens * f, new_tokens * f, longest * f}; }  // a fraction left
};

// Seconds one group needs for `w` with continuous batching over `slots` sequence slots: a step per
// new token of the fullest slot (at least the longest row's), each paying the fixed cost, plus
// every row-step and prompt token once.
double run_seconds(const PassCost& c, const RowsWork& w, int slots);

// What one group (a replica, or the tp group) runs, in the order it is given: rows given while
// its slots have room start at once, beside what runs; rows given later start only when the
// earlier rows have freed slots (their new tokens / slots steps in). So a long row handed out
// after many short ones ends that many steps later, not beside them (run_seconds alone, which sees
// only the sum, would put it beside them).
struct QueuedWork {
  RowsWork sum;
  double last_end = 0;  // the step by which its last row ends, at least
  QueuedWork() = default;
  explicit QueuedWork(const RowsWork& held) : sum(held), last_end(held.longest) {}
  void then(const RowsWork& w, int slots);
  double seconds(const PassCost& c, int slots) const;
};

// One change of mode (or the first choice), with what was predicted and what it cost.
struct RuntimeDecision {
  double at_s = 0;           // seconds into the run
  int64_t batch = 0;         // the first batch (of this run's) the decision applies to
  int64_t rows_left = 0;     // rows not yet handed out, from that batch on
  RuntimeMode chosen = RuntimeMode::DataParallel;
  double predicted_dp_s = 0, predicted_tp_s = 0;  // remaining time of the run, each way to its end
  // The best later switch: dp for the batches before `switch_batch`, then tp for the rest (-1: no
  // later batch to switch at). A dp choice is this plan when it is the sooner one.
  double predicted_switch_s = -1;
  int64_t switch_batch = -1;
  double predicted_s() const {
    if (chosen == RuntimeMode::TensorParallel) return predicted_tp_s;
    return switch_batch >= 0 && predicted_switch_s < predicted_dp_s ? predicted_switch_s : predicted_dp_s;
  }
  double measured_s = -1;    // the remaining time it took (from at_s to the end of the run); -1: unknown yet
  PassCost dp_pass, tp_pass;  // the pass costs the prediction used (dp: fitted so far; tp: from it)
  std::string why;
};

// What a tp pass costs against one replica's dp pass, from what the job has at its start: the cost
// model's view (a tp rank's share of the compute) and the pass's syncs, each at the latency of an
// all-reduce timed now (the mean of back-to-back calls). On a shared machine a tp pass also waits
// at its syncs whenever a rank is descheduled mid-compute, which neither sees (3x the predicted tail
// at load 6-16 here): so a one-row pass of each mode is timed side by side, and what the tp pass
// took beyond the model's tp pass is added to every tp pass (`wait_s`; 0 on a quiet machine). The
// job's own passes then correct both modes (PassFit).
struct TensorParallelCosts {
  double compute_ratio = 1;     // cost model: a tp rank's compute / one replica's, for the same rows
  int syncs_per_pass = 0;       // all-reduces in a tp pass
  double sync_latency_s = 0;    // one all-reduce of one token's row, back to back (timed)
  double sync_s_per_token = 0;  // and per further token
  double wait_s = 0;            // per tp pass, beyond the above (timed one-row passes)
};

// How many back-to-back all-reduces time a sync of one size whose single call took `call_s`
// (TensorParallelCosts: the mean of this many): `most`, fewer where they would take more than
// `budget_s` (over a slow link a 64-row sync takes ~20 ms at 100 Mbit/s, and 32 of them were 0.7 s
// of a 7 s job's setup, paid before the first batch whatever the planner then chose), never fewer
// than 4 (a mean still; on a slow link each call is long enough to time alone).
int sync_probe_calls(double call_s, int most, double budget_s = 0.1);

// The ratio from the cost model's predictions of the two plans' decode steps for the same workload;
// `dp_prior` is one replica's pass cost as the cost model predicts it (the fit replaces it as
// passes are measured).
double tp_compute_ratio(const Prediction& dp, const Prediction& tp);
PassCost pass_cost_of(const Prediction& p, const Workload& work);

// A hand-out smaller than its batch (dp): rows of batch `batch` a replica takes now, the rest of
// the batch staying in the queue for the next hand-out.
struct HandOutDecision {
  double at_s = 0;             // seconds into the run
  int64_t batch = 0;           // the hand-out's index (of this run's hand-outs)
  int64_t batch_rows = 0;      // rows the batch had
  int64_t rows = 0;            // rows handed out now
  int64_t rows_left = 0;       // rows not yet handed out, this batch's included
  double predicted_s = 0;      // remaining time of the run with hand-outs of at most `rows` rows
  double predicted_whole_s = 0;  // ... with whole batches
  double measured_s = -1;      // the remaining time it took; -1: unknown yet
  std::string why;
};

// The remaining time of a dp run when `hand_out` (one RowsWork per row) goes out now as one
// hand-out and every row `later` (in order) one at a time after it (later hand-outs can be cut as
// finely as balance needs), each to the replica on which it ends soonest. A replica runs what it
// holds (`held`: [replica], what it still has to do) and its hand-outs together, continuous
// batching over `slots` slots, as run_seconds predicts for their sum.
double dp_makespan(const PassCost& c, std::vector<RowsWork> held, const std::vector<RowsWork>& hand_out,
                   const std::vector<RowsWork>& later, int slots);

class RuntimePlanner {
 public:
  // replicas: of the dp grid (= ranks of the tp group); slots: batch.max_sequences; switch_at >= 0:
  // switch at that batch whatever the prediction (tests; LOWSYNC_RUNTIME_SWITCH_AT); hand_out > 0:
  // every dp hand-out has at most that many rows whatever the prediction (tests;
  // LOWSYNC_RUNTIME_HAND_OUT_ROWS).
  RuntimePlanner(int replicas, int slots, const PassCost& dp_prior, const TensorParallelCosts& tp,
                 int64_t switch_at = -1, int64_t hand_out = -1);

  // A pass this rank's replica measured in the current mode.
  void measured(RuntimeMode mode, int decode_rows, int64_t prefill_tokens, double seconds);
  // Before handing out `next`: dp (hand it out) or tp (keep it and every later batch for the tp group).
  // rest: the work of batch `next` and of every later one, in order. Three plans for the rest, each
  // to the run's end: dp (each batch to the replica on which it ends soonest), tp now (once the
  // replicas finish what they hold), and dp then tp at the best later batch (among the last
  // kSwitchCandidates). tp now needs a clear gain (5%) over both others: the switch is one-way, and
  // a later switch stays open while dp runs. The first call (before any hand-out) is the job's
  // whole plan: with tp predicted best from the start, no batch goes to a replica.
  static constexpr int kSwitchCandidates = 32;
  RuntimeMode decide(int64_t next, const std::vector<RowsWork>& rest, double now_s);
  // dp: how many of the first rows of batch `next` to hand out now (1 .. its rows). The batch
  // whole unless a smaller hand-out is predicted to end the run clearly sooner (dp_makespan, at
  // least 15%; the largest such size within 1% of the best): when this batch on one replica would
  // outlast the rest. Only looked at when few rows are left (at most 4 hand-outs of max_sequences
  // per replica). rest_rows: the rows of batch `next` and of every later batch, one RowsWork each.
  int64_t hand_out_rows(int64_t next, const std::vector<std::vector<RowsWork>>& rest_rows, double now_s);
  // Whether hand_out_rows looks at sizes with `rows_left` rows not yet handed out (else: whole).
  // Never with a forced mode switch: tests force it at a batch index, which cuts would move.
  bool sizes_hand_outs(int64_t rows_left) const {
    return switch_at_ < 0 && (hand_out_ > 0 || rows_left <= 4 * static_cast<int64_t>(replicas_) * slots_);
  }
  void handed_out(int64_t batch, const RowsWork& work, double now_s);
  void completed(int64_t batch);
  // At the end of the run: every decision's measured remaining time.
  void finish(double end_s);

  RuntimeMode mode() const { return mode_; }
  const std::vector<RuntimeDecision>& decisions() const { return decisions_; }
  const std::vector<HandOutDecision>& hand_outs() const { return hand_outs_; }
  int64_t evaluations() const { return evaluations_; }
  PassCost dp_cost() const { return fit_[0].cost(dp_prior_); }
  const PassCost& dp_prior() const { return dp_prior_; }
  // The last hand-out's prediction (recorded or not), to compare with what the rest took.
  const RuntimeDecision& last_evaluation() const { return last_; }
  PassCost tp_cost() const;  // the fitted tp passes once measured, else tp_predicted
  PassCost tp_predicted() const;  // from dp's fit and the tp costs (what the decision used)
  const TensorParallelCosts& tp_costs() const { return tp_; }
  const PassFit& fit(RuntimeMode m) const { return fit_[m == RuntimeMode::DataParallel ? 0 : 1]; }

 private:
  struct InFlight {
    RowsWork work;
    double handed_s = 0, predicted_s = 0;
  };

  int replicas_, slots_;
  PassCost dp_prior_;
  TensorParallelCosts tp_;
  int64_t switch_at_, hand_out_;
  RuntimeMode mode_ = RuntimeMode::DataParallel;
  PassFit fit_[2];
  std::map<int64_t, InFlight> in_flight_;
  // What each replica still holds (the batches in flight, the fraction predicted left, the longest
  // first to the replica that holds least: which replica holds which is not known on rank 0).
  std::vector<RowsWork> held_now(double now_s) const;
  std::vector<RuntimeDecision> decisions_;
  std::vector<HandOutDecision> hand_outs_;
  RuntimeDecision last_;
  int64_t evaluations_ = 0;
};

}  // namespace lowsync
