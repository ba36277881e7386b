#include "runtime/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/sampling.h"
#include "tests/testutil/bf16.h"

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

// A temperature small enough that logit / temperature overflows (1e-40 on logits ~1) made every
// score +inf, exp(inf - inf) NaN, and the draw fell through to the least likely token; a +inf
// logit did the same. The limit of the distribution is the first largest logit.
TEST(SamplerTest, OverflowingScoresTakeTheFirstLargestLogit) {
  const std::vector<float> logits = {0.1f, 0.9f, -0.4f, 0.8f, 0.3f};
  for (uint64_t seed = 0; seed < 20; ++seed) {
    for (float t : {1e-40f, 1e-38f}) {  // both +inf at 1e-40; 1e37 apart (a certain draw) at 1e-38
      EXPECT_EQ(SampleNextToken(logits.data(), 5, Sampled(t, 1.0f, 0, seed), {}, 0), 1) << t;
      EXPECT_EQ(SampleNextToken(logits.data(), 5, Sampled(t, 0.9f, 3, seed), {}, 0), 1) << t;
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> infinite = {0.0f, 1.0f, inf, 2.0f, inf};
  EXPECT_EQ(SampleNextToken(infinite.data(), 5, Sampled(1.0f, 1.0f, 0, 7), {}, 0), 2);
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
  p.sampling.frequency_penalty = 0.2f;                                  // 3.0 - 0.4 = 2.6 > 2.5
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

TEST(SamplerTest, RepetitionPenaltyCountsThePromptFromTheFirstToken) {
  // Prompt {0, 2, 0}, nothing generated yet. Penalty 2: id 0 (2.0 > 0) -> 2.0 / 2 = 1.0, id 2
  // (-1.0 < 0) -> -1.0 * 2 = -2.0; ids 1 and 3 keep 1.5 and 0.5. Argmax: id 1.
  const std::vector<float> logits = {2.0f, 1.5f, -1.0f, 0.5f};
  const std::vector<int32_t> history = {0, 2, 0};
  GenerationParams p = Greedy();
  EXPECT_EQ(SampleNextToken(logits.data(), 4, p, {}, 0, &history), 0);  // off (1.0)
  p.sampling.repetition_penalty = 2.0f;
  EXPECT_EQ(SampleNextToken(logits.data(), 4, p, {}, 0, &history), 1);
  p.sampling.repetition_penalty = 1.25f;  // 2.0 / 1.25 = 1.6 > 1.5
  EXPECT_EQ(SampleNextToken(logits.data(), 4, p, {}, 0, &history), 0);
  EXPECT_EQ(SampleNextToken(logits.data(), 4, p, {}, 0, nullptr), 0);  // no history, no penalty
}

TEST(SamplerTest, RepetitionPenaltyMultipliesNegativeScoresAndAppliesOncePerId) {
  // Negative scores are multiplied: -1.0 * 2 = -2.0 < -1.5.
  const std::vector<float> negative = {-1.0f, -1.5f};
  const std::vector<int32_t> once = {0};
  GenerationParams p = Greedy();
  p.sampling.repetition_penalty = 2.0f;
  EXPECT_EQ(SampleNextToken(negative.data(), 2, p, {}, 0, &once), 1);
  p.sampling.repetition_penalty = 1.25f;  // -1.25 > -1.5
  EXPECT_EQ(SampleNextToken(negative.data(), 2, p, {}, 0, &once), 0);
  // Id 0 three times in the history is still divided once: 4.0 / 2 = 2.0 > 1.9 (not 0.5).
  const std::vector<float> logits = {4.0f, 1.9f, 1.0f};
  const std::vector<int32_t> thrice = {0, 0, 0};
  p.sampling.repetition_penalty = 2.0f;
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {}, 1, &thrice), 0);
  // A penalty below 1 favours repeats: 1.0 / 0.5 = 2.0 > 1.2.
  const std::vector<float> close = {1.0f, 1.2f};
  p.sampling.repetition_penalty = 0.5f;
  EXPECT_EQ(SampleNextToken(close.data(), 2, p, {}, 0, &once), 0);
  // Zero stays zero (0 / 2 = 0) and -0.0 stays above a negative score.
  const std::vector<float> zero = {0.0f, -1e-3f};
  p.sampling.repetition_penalty = 2.0f;
  const std::vector<int32_t> both = {0, 1};
  EXPECT_EQ(SampleNextToken(zero.data(), 2, p, {}, 0, &both), 0);  // 0 vs -2e-3
}

TEST(SamplerTest, RepetitionComesBeforeFrequencyAndPresence) {
  // History {0}, generated (num_generated 1). Repetition 2 and frequency 1:
  //   repetition first: 3.0 / 2 - 1 = 0.5 < 0.75 -> id 1;  (frequency first: (3 - 1) / 2 = 1.0 -> id 0)
  //   for -1.0: -1.0 * 2 - 1 = -3.0 > -3.5 -> id 0;       (frequency first: (-1 - 1) * 2 = -4 -> id 1)
  const std::vector<int32_t> history = {0};
  GenerationParams p = Greedy();
  p.sampling.repetition_penalty = 2.0f;
  p.sampling.frequency_penalty = 1.0f;
  const std::vector<float> positive = {3.0f, 0.75f};
  EXPECT_EQ(SampleNextToken(positive.data(), 2, p, {}, 1, &history), 1);
  const std::vector<float> negative = {-1.0f, -3.5f};
  EXPECT_EQ(SampleNextToken(negative.data(), 2, p, {}, 1, &history), 0);
  // The prompt does not count for frequency: the same id in the prompt only (num_generated 0)
  // gets the repetition penalty alone: 3.0 / 2 = 1.5 > 0.75.
  EXPECT_EQ(SampleNextToken(positive.data(), 2, p, {}, 0, &history), 0);
}

TEST(SamplerTest, StopMaskingComesAfterPenalties) {
  // A negative presence penalty cannot lift a masked stop id: it stays -inf until min_new_tokens.
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f};
  const std::vector<int32_t> history = {1, 1, 1};  // prompt {1}, generated {1, 1}
  GenerationParams p = Greedy();
  p.min_new_tokens = 3;
  p.sampling.presence_penalty = -100.0f;
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {1}, 2, &history), 0);
  EXPECT_EQ(SampleNextToken(logits.data(), 3, p, {1}, 3, &history), 1);  // reached: 0.5 + 100
}

// SampleNextToken on penalised, masked rows against the kernels' CPU references
// (kernels/sampling.h: CountTokens builds the per-sequence tables, ApplyPenalties changes the
// row, SampleRows draws), which the CUDA kernels are tested against: every id must agree.
TEST(SamplerTest, PenaltyReferenceThenSampleReferenceAgreesWithSampleNextToken) {
  std::mt19937 rng(77);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> pick(0, 1 << 20);
  const std::vector<float> temperatures = {0.0f, 0.0f, 0.6f, 1.0f};
  const std::vector<float> top_ps = {1.0f, 0.85f, 0.5f};
  const std::vector<float> repetitions = {1.0f, 1.1f, 1.3f, 0.8f};
  const std::vector<float> frequencies = {0.0f, 0.2f, 0.7f, -0.3f};
  const std::vector<float> presences = {0.0f, 0.1f, 0.5f};
  int compared = 0;
  for (int32_t vocab : {3, 50, 2000}) {
    for (int r = 0; r < 200; ++r) {
      std::vector<float> logits(vocab);
      for (float& v : logits) v = r % 2 ? 2.0f * normal(rng) : testutil::TruncateToBf16(3.0f * normal(rng));
      const int32_t prompt = 1 + pick(rng) % 40;
      const int32_t generated = pick(rng) % 30;
      std::vector<int32_t> history(prompt + generated);
      const int32_t narrow = std::max(1, vocab / 10);  // repeats are common
      for (int32_t& id : history) id = pick(rng) % narrow;
      GenerationParams params;
      params.sampling.temperature = temperatures[pick(rng) % temperatures.size()];
      params.sampling.top_p = top_ps[pick(rng) % top_ps.size()];
      params.sampling.seed = pick(rng);
      params.sampling.repetition_penalty = repetitions[pick(rng) % repetitions.size()];
      params.sampling.frequency_penalty = frequencies[pick(rng) % frequencies.size()];
      params.sampling.presence_penalty = presences[pick(rng) % presences.size()];
      params.min_new_tokens = pick(rng) % 40;
      const std::vector<int32_t> stops = {pick(rng) % vocab, pick(rng) % narrow};

      std::vector<int32_t> counts(vocab, 0);
      std::vector<uint8_t> seen(vocab, 0);
      const std::vector<int32_t> slots(history.size(), 0);
      std::vector<uint8_t> counted(history.size(), 0);
      for (int32_t i = prompt; i < prompt + generated; ++i) counted[i] = 1;
      kernels::CountTokensReference(counts.data(), seen.data(), vocab, slots.data(), history.data(), counted.data(),
                                    static_cast<int32_t>(history.size()));
      kernels::PenaltyRow penalty;
      penalty.slot = params.sampling.has_penalties() ? 0 : -1;
      penalty.repetition = params.sampling.repetition_penalty;
      penalty.frequency = params.sampling.frequency_penalty;
      penalty.presence = params.sampling.presence_penalty;
      penalty.stop_count = generated < params.min_new_tokens ? static_cast<int32_t>(stops.size()) : 0;
      std::vector<float> scores = logits;
      kernels::ApplyPenaltiesReference(scores.data(), 1, vocab, &penalty, counts.data(), seen.data(), stops.data());
      kernels::SamplingRow row;
      row.temperature = params.sampling.temperature;
      row.top_k = params.sampling.top_k;
      row.top_p = params.sampling.top_p;
      row.uniform = SamplingUniform(params.sampling.seed, generated);
      int32_t reference_id = -2;
      kernels::SampleRowsReference(scores.data(), 1, vocab, &row, &reference_id);
      const int32_t sampler_id = SampleNextToken(logits.data(), vocab, params, stops, generated, &history);
      ASSERT_EQ(reference_id, sampler_id) << "vocab " << vocab << " row " << r;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 600);
}

TEST(SamplerTest, SamplingUniformIsTheDrawsFixedFunctionOfSeedAndStep) {
  // Pinned: changing these values changes every seeded request's output.
  EXPECT_EQ(SamplingUniform(0, 0), 0x1.4e0dba5e9a32fp-1);
  EXPECT_EQ(SamplingUniform(42, 7), 0x1.0374ae4658e22p-2);
  EXPECT_EQ(SamplingUniform(~uint64_t{0}, 123456), 0x1.b402b43d3ea28p-3);
  for (int32_t step = 0; step < 1000; ++step) {
    const double u = SamplingUniform(99, step);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

// The CUDA sampler's CPU reference (kernels/sampling.h) picks SampleNextToken's id for rows
// without penalties or stop masking; the kernel is tested against that reference, so this ties
// the kernel to the real sampler.
TEST(SamplerTest, KernelReferenceAgreesWithSampleNextToken) {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> pick(0, 1 << 20);
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> temperatures = {0.0f, 0.25f, 0.7f, 1.0f, 1.9f};
  const std::vector<float> top_ps = {1.0f, 0.95f, 0.8f, 0.5f, 1e-5f, 0.0f};
  int compared = 0;
  for (int32_t vocab : {1, 2, 5, 1000, 4099}) {
    const std::vector<int32_t> top_ks = {0, 1, 2, 40, 1024, vocab, vocab + 3};
    for (int r = 0; r < 300; ++r) {
      std::vector<float> logits(vocab);
      switch (r % 4) {
        case 0:  // gaussian
          for (float& v : logits) v = 2.0f * normal(rng);
          break;
        case 1:  // bf16-rounded: many exact ties
          for (float& v : logits) v = testutil::TruncateToBf16(3.0f * normal(rng));
          break;
        case 2:  // a few values only
          for (float& v : logits) v = 0.5f * std::round(normal(rng));
          break;
        case 3:  // peaked, with masked ids
          for (float& v : logits) v = normal(rng);
          logits[pick(rng) % vocab] += 12.0f;
          for (int k = 0; k < vocab / 3; ++k) logits[pick(rng) % vocab] = -inf;
          break;
      }
      GenerationParams params;
      params.sampling.temperature = temperatures[pick(rng) % temperatures.size()];
      params.sampling.top_k = top_ks[pick(rng) % top_ks.size()];
      params.sampling.top_p = top_ps[pick(rng) % top_ps.size()];
      params.sampling.seed = static_cast<uint64_t>(pick(rng)) * 7919u;
      const int32_t step = pick(rng) % 500;
      kernels::SamplingRow row;
      row.temperature = params.sampling.temperature;
      row.top_k = params.sampling.top_k;
      row.top_p = params.sampling.top_p;
      row.uniform = SamplingUniform(params.sampling.seed, step);
      int32_t reference_id = -2;
      kernels::SampleRowsReference(logits.data(), 1, vocab, &row, &reference_id);
      const int32_t sampler_id = SampleNextToken(logits.data(), vocab, params, {0}, step);
      ASSERT_EQ(reference_id, sampler_id) << "vocab " << vocab << " row " << r << " temperature " << row.temperature
                                          << " top_k " << row.top_k << " top_p " << row.top_p;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 1500);
}

}  // namespace
}  // namespace glmserve
