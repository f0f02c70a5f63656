#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "jobs/sampler.h"

using namespace lowsync;

TEST(Sampler, GreedyTakesFirstMaximum) {
  GenerateOptions opt;  // temperature 0
  Sampler s(opt, 0, 0);
  std::vector<float> logits = {0.1f, 3.f, -1.f, 3.f};
  EXPECT_EQ(s.next(logits.data(), 4, {}, {}), 1);
}

TEST(Sampler, FrequenciesFollowSoftmaxOfLogitsOverTemperature) {
  GenerateOptions opt;
  opt.temperature = 0.5f;
  Sampler s(opt, 42, 3);
  std::vector<float> logits = {0.f, 0.5f, 1.f, -0.5f};
  double z = 0;
  std::vector<double> p;
  for (float l : logits) z += std::exp(l / 0.5);
  for (float l : logits) p.push_back(std::exp(l / 0.5) / z);
  const int draws = 40000;
  std::vector<int> count(4, 0);
  for (int i = 0; i < draws; ++i) ++count[s.next(logits.data(), 4, {}, {})];
  for (int v = 0; v < 4; ++v) EXPECT_NEAR(count[v] / double(draws), p[v], 0.01) << "token " << v;
}

TEST(Sampler, TopKKeepsOnlyTheKMostLikely) {
  GenerateOptions opt;
  opt.temperature = 1.f;
  opt.top_k = 2;
  Sampler s(opt, 1, 0);
  std::vector<float> logits = {2.f, 0.f, 1.9f, 1.f};
  for (int i = 0; i < 2000; ++i) {
    int t = s.next(logits.data(), 4, {}, {});
    EXPECT_TRUE(t == 0 || t == 2) << t;
  }
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  GenerateOptions opt;
  opt.temperature = 1.f;
  opt.top_p = 0.6f;  // p = [0.665, 0.245, 0.09]: the first token alone reaches 0.6
  Sampler s(opt, 5, 9);
  std::vector<float> logits = {2.f, 1.f, 0.f};
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(s.next(logits.data(), 3, {}, {}), 0);
}

TEST(Sampler, StreamDependsOnSeedAndRowOnly) {
  GenerateOptions opt;
  opt.temperature = 1.f;
  std::vector<float> logits(50, 0.f);
  auto draw = [&](uint64_t seed, int64_t row) {
    Sampler s(opt, seed, row);
    std::vector<int> out;
    for (int i = 0; i < 20; ++i) out.push_back(s.next(logits.data(), 50, {}, {}));
    return out;
  };
  EXPECT_EQ(draw(7, 4), draw(7, 4));
  EXPECT_NE(draw(7, 4), draw(7, 5));
  EXPECT_NE(draw(7, 4), draw(8, 4));
}

TEST(Sampler, MinPKeepsTokensAtLeastMinPTimesTheTopOne) {
  GenerateOptions opt;
  opt.temperature = 1.f;
  opt.min_p = 0.3f;  // p / p_top = [1, e^-1 = 0.37, e^-2 = 0.14]: the third is cut
  Sampler s(opt, 3, 1);
  std::vector<float> logits = {2.f, 1.f, 0.f};
  std::vector<int> count(3, 0);
  for (int i = 0; i < 2000; ++i) ++count[s.next(logits.data(), 3, {}, {})];
  EXPECT_EQ(count[2], 0);
  EXPECT_GT(count[1], 0);
}

TEST(Sampler, PenaltiesAndMinNewTokensChangeTheGreedyChoice) {
  GenerateOptions opt;  // greedy
  std::vector<float> logits = {2.f, 1.9f, -1.f, 1.4f};
  opt.repetition_penalty = 2.f;  // token 0 is in the prompt: 2 / 2 = 1 < 1.9
  EXPECT_EQ(Sampler(opt, 0, 0).next(logits.data(), 4, {0}, {}), 1);
  opt.repetition_penalty = 1.f;
  opt.frequency_penalty = 0.3f;  // token 0 twice in the output: 2 - 0.6 = 1.4 < 1.9, token 1 once: 1.6
  opt.presence_penalty = 0.1f;   // 1.4 - 0.1 = 1.3, 1.6 - 0.1 = 1.5 > 1.4 (token 3, not in the output)
  EXPECT_EQ(Sampler(opt, 0, 0).next(logits.data(), 4, {}, {0, 0, 1}), 1);
  opt.frequency_penalty = opt.presence_penalty = 0.f;
  opt.min_new_tokens = 2;  // stop token 0 masked before 2 new tokens
  opt.stop_token_ids = {0};
  EXPECT_EQ(Sampler(opt, 0, 0).next(logits.data(), 4, {}, {3}), 1);
  EXPECT_EQ(Sampler(opt, 0, 0).next(logits.data(), 4, {}, {3, 2}), 0);
}
