#include "runtime/sampler.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace glmserve {
namespace {

GenerationParams Greedy() { return GenerationParams{}; }

GenerationParams Sampled(float temperature, float top_p, int32_t top_k, uint64_t seed) {
  GenerationParams p;
  p.sampling.temperature = temperature;
  p.sampling.top_p = top_p;
  p.sampling.top_k = top_k;
  p.sampling.seed = seed;
  return p;
}

TEST(SamplerTest, GreedyTakesFirstMaximumLikeArgmax) {
  const std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(SampleNextToken(logits.data(), 4, Greedy(), {}, 0), 1);
}

TEST(SamplerTest, MinNewTokensMasksStopIdsUntilReached) {
  const std::vector<float> logits = {0.0f, 5.0f, 1.0f};
  GenerationParams p = Greedy();
  p.min_new_tokens = 2;
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {1}, 0), 2);
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {1}, 1), 2);
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {1}, 2), 1);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  const std::vector<float> logits = {0.1f, 0.3f, 0.2f, 0.25f};
  for (uint64_t seed = 0; seed < 50; ++seed) {
    EXPECT_EQ(SampleNextToken(logits.data(), 4, Sampled(1.0f, 1.0f, 1, seed), {}, 0), 1);
    EXPECT_EQ(SampleNextToken(logits.data(), 4, Sampled(1.0f, 0.01f, 0, seed), {}, 0), 1);
  }
}

TEST(SamplerTest, SameSeedAndStepSameDraw) {
  std::vector<float> logits(50, 0.0f);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    for (int32_t step = 0; step < 5; ++step) {
      EXPECT_EQ(SampleNextToken(logits.data(), 50, Sampled(1.0f, 1.0f, 0, seed), {}, step),
                SampleNextToken(logits.data(), 50, Sampled(1.0f, 1.0f, 0, seed), {}, step));
    }
  }
}

TEST(SamplerTest, DrawFrequenciesFollowSoftmax) {
  // p = softmax([0, ln 3]) = [0.25, 0.75]
  const std::vector<float> logits = {0.0f, std::log(3.0f)};
  int ones = 0;
  const int n = 4000;
  for (int i = 0; i < n; ++i) ones += SampleNextToken(logits.data(), 2, Sampled(1.0f, 1.0f, 0, i), {}, 0);
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.75, 0.03);
}

TEST(SamplerTest, TopPKeepsSmallestPrefixReachingMass) {
  // p = [0.5, 0.3, 0.2]: top_p 0.7 keeps {0, 1}; id 2 is never drawn.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  int seen[3] = {0, 0, 0};
  for (int i = 0; i < 2000; ++i) ++seen[SampleNextToken(logits.data(), 3, Sampled(1.0f, 0.7f, 0, i), {}, 0)];
  EXPECT_EQ(seen[2], 0);
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_NEAR(seen[0] / 2000.0, 0.5 / 0.8, 0.04);
}

TEST(SamplerTest, FrequencyAndPresencePenaltiesCountOnlyGeneratedIds) {
  const std::vector<float> logits = {3.0f, 2.5f, 1.0f};
  // history: prompt {0, 0, 0} then generated {0, 0}; only the generated two count.
  const std::vector<int32_t> history = {0, 0, 0, 0, 0};
  GenerationParams p = Greedy();
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, &history), 0);  // no penalties
  p.sampling.frequency_penalty = 0.2f;  // 3.0 - 0.4 = 2.6 > 2.5
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, &history), 0);
  p.sampling.frequency_penalty = 0.3f;  // 3.0 - 0.6 = 2.4 < 2.5
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, &history), 1);
  p.sampling.frequency_penalty = 0.0f;
  p.sampling.presence_penalty = 0.6f;  // once, whatever the count
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, &history), 1);
  p.sampling.presence_penalty = -1.0f;  // negative favours repeats
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, &history), 0);
  p.sampling.presence_penalty = 0.6f;
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 0, &history), 0);  // nothing generated yet
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 2, nullptr), 0);   // no history, no penalty
}

}  // namespace
}  // namespace glmserve
