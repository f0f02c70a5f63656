#include "jobs/result_bytes.h"

#include <cstring>

namespace lowsync {

// A batch's results as bytes: per row, its token ids, log-probs, embedding, top alternatives,
// finish reason, sum and timings.
std::vector<char> pack_results(int64_t index, const std::vector<RowResult>& rows) {
  std::vector<char> out;
  // resize + memcpy rather than insert: GCC 12 warns (-Wstringop-overflow) about the inlined insert.
  auto put = [&](const void* p, size_t n) {
    const size_t at = out.size();
    out.resize(at + n);
    if (n > 0) std::memcpy(out.data() + at, p, n);
  };
  auto put_vec = [&](const auto& v) {
    int64_t n = static_cast<int64_t>(v.size());
    put(&n, sizeof n);
    put(v.data(), n * sizeof(v[0]));
  };
  put(&index, sizeof index);
  int64_t n = static_cast<int64_t>(rows.size());
  put(&n, sizeof n);
  for (const auto& r : rows) {
    put_vec(r.tokens);
    put_vec(r.token_logprobs);
    put_vec(r.embedding);
    put_vec(r.top_ids);
    put_vec(r.top_logprobs);
    put(&r.finish_reason, sizeof r.finish_reason);
    put(&r.sum_logprob, sizeof r.sum_logprob);
    put(&r.latency_ms, sizeof r.latency_ms);
    put(&r.prefill_ms, sizeof r.prefill_ms);
    put(&r.decode_ms, sizeof r.decode_ms);
  }
  return out;
}

std::vector<RowResult> unpack_results(const std::vector<char>& in, int64_t& index) {
  size_t at = 0;
  auto get = [&](void* p, size_t n) { std::memcpy(p, in.data() + at, n); at += n; };
  auto get_vec = [&](auto& v) {
    int64_t n;
    get(&n, sizeof n);
    v.resize(n);
    get(v.data(), n * sizeof(v[0]));
  };
  get(&index, sizeof index);
  int64_t n;
  get(&n, sizeof n);
  std::vector<RowResult> rows(n);
  for (auto& r : rows) {
    get_vec(r.tokens);
    get_vec(r.token_logprobs);
    get_vec(r.embedding);
    get_vec(r.top_ids);
    get_vec(r.top_logprobs);
    get(&r.finish_reason, sizeof r.finish_reason);
    get(&r.sum_logprob, sizeof r.sum_logprob);
    get(&r.latency_ms, sizeof r.latency_ms);
    get(&r.prefill_ms, sizeof r.prefill_ms);
    get(&r.decode_ms, sizeof r.decode_ms);
  }
  return rows;
}

}  // namespace lowsync
