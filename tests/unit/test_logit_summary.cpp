// A split head's row summaries (layers/logit_summary.h), merged over uneven vocabulary slices,
// against the whole row computed directly: the first argmax (ties included), log-probs within
// double rounding of a long-double log-softmax, the target's logit from whichever slice holds it,
// the first non-finite value named, and the summaries' trip through the wire format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "layers/logit_summary.h"

using namespace lowsync;

namespace {

// The row's summary through slices ending at `ends` (in order, the last = the row's length), each
// packed and unpacked as between ranks.
LogitSummary through_slices(const std::vector<float>& row, const std::vector<int>& ends, int64_t target) {
  std::vector<LogitSummary> parts;
  for (size_t r = 0, begin = 0; r < ends.size(); begin = ends[r], ++r) {
    const Span slice{static_cast<int>(begin), ends[r] - static_cast<int>(begin)};
    double wire[LogitSummary::kDoubles];
    summarize_logits(row.data() + begin, slice, target).pack(wire);
    parts.push_back(LogitSummary::unpack(wire));
  }
  return merge_summaries(parts);
}

}  // namespace

TEST(LogitSummary, SlicesMergeToTheWholeRow) {
  std::mt19937 rng(7);
  std::normal_distribution<float> logit(0.f, 4.f);
  for (int trial = 0; trial < 50; ++trial) {
    const int vocab = 203 + trial;
    std::vector<float> row(vocab);
    for (float& x : row) x = logit(rng);
    if (trial % 3 == 0) row[vocab - 7] = row[11] = 30.f;  // a tie across slices: the first id wins
    const int target = (trial * 37) % vocab;
    const int first_max = static_cast<int>(std::max_element(row.begin(), row.end()) - row.begin());
    long double z = 0;
    for (float x : row) z += std::exp(static_cast<long double>(x) - row[first_max]);
    const long double want = static_cast<long double>(row[target]) - row[first_max] - std::log(z);
    for (const std::vector<int>& ends :
         {std::vector<int>{vocab}, {96, vocab}, {80, 144, vocab}, {1, 2, vocab - 1, vocab}}) {
      const LogitSummary s = through_slices(row, ends, target);
      EXPECT_EQ(s.argmax, first_max) << "trial " << trial << ", " << ends.size() << " slices";
      EXPECT_EQ(s.max, row[first_max]);
      ASSERT_TRUE(s.has_target);
      EXPECT_EQ(s.target, row[target]);
      EXPECT_NEAR(s.target_logprob(), static_cast<double>(want), 1e-12);
      EXPECT_EQ(s.bad, -1);
    }
  }
}

TEST(LogitSummary, NamesTheFirstNonFiniteLogit) {
  std::vector<float> row(100, 1.f);
  row[70] = std::numeric_limits<float>::infinity();
  row[90] = std::numeric_limits<float>::quiet_NaN();
  LogitSummary s = through_slices(row, {50, 80, 100}, 3);
  EXPECT_EQ(s.bad, 70);
  EXPECT_FALSE(s.bad_is_nan);
  row[70] = 1.f;
  s = through_slices(row, {50, 80, 100}, 3);
  EXPECT_EQ(s.bad, 90);
  EXPECT_TRUE(s.bad_is_nan);
}
