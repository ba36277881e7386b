// Temperature / top-k / top-p sampling: the CPU reference against hand-computed draws (run
// everywhere), the CUDA kernel against the reference where a GPU exists (skipped otherwise, e.g.
// in CI). The reference is tied to runtime/model/sampler.cc's SampleNextToken by
// tests/runtime/sampler_test.cc.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rms_norm.h"
#include "kernels/sampling.h"
#include "tests/testutil/bf16.h"

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
#include <cuda_runtime.h>
#endif

namespace glmserve::kernels {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

SamplingRow Row(float temperature, int32_t top_k, float top_p, double uniform) {
  SamplingRow r;
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.uniform = uniform;
  return r;
}

int32_t SampleOne(const std::vector<float>& logits, const SamplingRow& row) {
  int32_t id = -2;
  SampleRowsReference(logits.data(), 1, static_cast<int32_t>(logits.size()), &row, &id);
  return id;
}

TEST(SamplingReference, TopKKeepsEveryScoreEqualToTheKth) {
  // transformers' TopKLogitsWarper removes scores < the k-th largest, so ties with it stay: top_k 1
  // keeps ids 1 and 3 here (probs 1, 1: target 2u), top_k 2 keeps 1, 3 and 4 (probs 1, 1, e^-2).
  const std::vector<float> logits = {1, 5, 3, 5, 3};
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 1, 1.0f, 0.0)), 1);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 1, 1.0f, 0.49)), 1);   // 0.98 < 1
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 1, 1.0f, 0.51)), 3);   // 1.02 >= 1
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 3, 1.0f, 0.999)), 4);  // 3 and 4 tie as the 3rd: both kept
  // top_k 2: the 2nd score (5) has no tie below it, so ids 1 and 3 only.
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 2, 1.0f, 0.999)), 3);
  EXPECT_EQ(SampleOne(logits, Row(0.0f, 1, 1.0f, 0.5)), 1);  // temperature 0: the first argmax
}

TEST(SamplingReference, EqualScoresAreOrderedByIdAndDrawnUniformly) {
  // Four equal scores: probs 1, 1, 1, 1 in id order; target = 4 u.
  const std::vector<float> logits = {2, 2, 2, 2};
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.0)), 0);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.3)), 1);   // 1.2 < 2
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.6)), 2);   // 2.4 < 3
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.99)), 3);  // 3.96 < 4
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 2, 1.0f, 0.99)), 3);  // top_k 2 ties with all four
}

TEST(SamplingReference, TinyTopPKeepsOnlyTheTopToken) {
  const std::vector<float> logits = {0, 3, 1, 3.5f, -2};
  for (double u : {0.0, 0.5, 0.999999}) EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1e-6f, u)), 3) << u;
}

TEST(SamplingReference, UniformZeroAndNearOneChooseFirstAndLastKept) {
  // Sorted ids 0, 1, 2 (top_k 3) with probs 1, e^-1, e^-2 (total 1.503): 0.999 * total = 1.5017
  // lies past 1 + e^-1 = 1.368.
  const std::vector<float> logits = {3, 2, 1, 0};
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 3, 1.0f, 0.0)), 0);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 3, 1.0f, 0.999)), 2);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.9999)), 3);
}

TEST(SamplingReference, TemperatureSharpensTheDistribution) {
  // Scores at temperature 0.5: 0 and 2 ln 3, so probs (sorted, relative to the max) 1 and 1/9:
  // id 1 takes 90% of the mass.
  const std::vector<float> logits = {0, std::log(3.0f)};
  EXPECT_EQ(SampleOne(logits, Row(0.5f, 0, 1.0f, 0.85)), 1);
  EXPECT_EQ(SampleOne(logits, Row(0.5f, 0, 1.0f, 0.95)), 0);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.8)), 0);  // at temperature 1 id 1 has only 75%
}

TEST(SamplingReference, TopPCutsTheNucleusAndRenormalises) {
  // probs 0.5, 0.3, 0.2 (ids 0, 1, 2): top_p 0.6 keeps ids 0 and 1 (mass 0.8), target = 0.8 u.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 0.6f, 0.6)), 0);    // 0.48 < 0.5
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 0.6f, 0.7)), 1);    // 0.56
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 0.6f, 0.999)), 1);  // never id 2
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.95)), 2);   // without top_p id 2 is reachable
}

TEST(SamplingReference, MaskedScoresAreNeverDrawn) {
  const std::vector<float> logits = {-kInf, 1, -kInf, 1};
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.0)), 1);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 1.0f, 0.999)), 3);
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 3, 1.0f, 0.999)), 3);  // the kept -inf (id 0) has prob 0
  EXPECT_EQ(SampleOne(logits, Row(1.0f, 0, 0.9f, 0.999)), 3);
}

TEST(SamplingReference, NanAndBadUniformAreLeftUndecided) {
  EXPECT_EQ(SampleOne({1, std::nanf(""), 0}, Row(1.0f, 0, 1.0f, 0.5)), -1);
  EXPECT_EQ(SampleOne({1, std::nanf(""), 0}, Row(0.0f, 0, 1.0f, 0.5)), -1);
  EXPECT_EQ(SampleOne({1, 2, 0}, Row(1.0f, 0, 1.0f, 1.0)), -1);
  EXPECT_EQ(SampleOne({1, 2, 0}, Row(1.0f, 0, 1.0f, -0.1)), -1);
}

// What the CPU's walk looked like for one row: enough to tell whether the kernel may leave it
// undecided under the contract in kernels/sampling.h.
struct CpuWalk {
  bool special = false;           // NaN, +inf max, all -inf or bad uniform: the kernel may say -1
  size_t keep = 0;                // kept tokens after top_k (ties with the k-th included)
  size_t ties_past_top_k = 0;     // of them, beyond the first top_k
  size_t eligible = 0;            // after the top_p cut
  size_t chosen_rank = 0;         // index in sorted order of the CPU's id
  double closest_mass = 1e300;    // |mass_i - top_p| over the cut loop's steps
  double closest_target = 1e300;  // |target - running_i| / total over the walk's steps
};

CpuWalk TraceCpu(const float* logits, int32_t vocab, const SamplingRow& p) {
  CpuWalk w;
  if (p.temperature <= 0.0f) return w;
  std::vector<float> scores(logits, logits + vocab);
  for (float& v : scores) v /= p.temperature;
  if (!(p.uniform >= 0.0 && p.uniform < 1.0)) w.special = true;
  for (float v : scores) w.special |= std::isnan(v);
  if (w.special) return w;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  const float max_score = scores[order[0]];
  if (max_score == kInf || max_score == -kInf) {
    w.special = true;
    return w;
  }
  w.keep = p.top_k > 0 ? std::min<size_t>(vocab, p.top_k) : vocab;
  const size_t keep_without_ties = w.keep;
  while (w.keep < static_cast<size_t>(vocab) && scores[order[w.keep]] == scores[order[w.keep - 1]]) ++w.keep;
  w.ties_past_top_k = w.keep - keep_without_ties;
  std::vector<double> probs(w.keep);
  double total = 0;
  for (size_t i = 0; i < w.keep; ++i) {
    probs[i] = scores[order[i]] == -kInf ? 0.0 : std::exp(static_cast<double>(scores[order[i]] - max_score));
    total += probs[i];
  }
  w.eligible = w.keep;
  if (p.top_p > 0.0f && p.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < w.keep; ++i) {
      mass += probs[i] / total;
      w.closest_mass = std::min(w.closest_mass, std::abs(mass - p.top_p));
      if (mass >= p.top_p) {
        w.eligible = i + 1;
        break;
      }
    }
    total = std::accumulate(probs.begin(), probs.begin() + w.eligible, 0.0);
  }
  const double target = p.uniform * total;
  double running = 0;
  w.chosen_rank = w.eligible - 1;
  for (size_t i = 0; i < w.eligible; ++i) {
    running += probs[i];
    w.closest_target = std::min(w.closest_target, std::abs(target - running) / total);
    if (target < running) {
      w.chosen_rank = i;
      break;
    }
  }
  return w;
}

// Why the kernel may answer -1 for this row, or "" when it must decide it.
std::string UndecidedReason(const float* logits, int32_t vocab, const SamplingRow& p) {
  const CpuWalk w = TraceCpu(logits, vocab, p);
  const size_t candidates = kSamplingCandidates;
  if (w.special) return "nan / inf / bad uniform";
  const double margin = 2 * SamplingDecisionMargin(vocab, w.keep > candidates);
  if (p.temperature <= 0.0f) return "";
  if (w.keep > candidates && w.keep < static_cast<size_t>(vocab)) return "top_k between the candidates and vocab";
  if (w.ties_past_top_k > 0 && (w.keep > candidates || p.top_k == 1)) return "ties with the k-th past the candidates";
  if (w.keep > candidates) {
    const bool use_top_p = p.top_p > 0.0f && p.top_p < 1.0f;
    if (use_top_p && w.eligible > candidates) return "nucleus beyond the candidates";
    if (!use_top_p && w.chosen_rank >= candidates) return "draw beyond the candidates";
  }
  if (w.closest_mass < margin) return "top_p cut inside the margin";
  if (w.closest_target < margin) return "draw inside the margin";
  return "";
}

TEST(SamplingReference, UndecidedReasonsFollowTheContract) {
  const std::vector<float> small = {1, 2, 3};
  EXPECT_EQ(UndecidedReason(small.data(), 3, Row(1.0f, 0, 0.9f, 0.3)), "");
  std::vector<float> flat(5000, 0.0f);
  std::vector<float> ramp(5000);
  for (size_t i = 0; i < ramp.size(); ++i) ramp[i] = -1e-3f * static_cast<float>(i);
  EXPECT_EQ(UndecidedReason(ramp.data(), 5000, Row(1.0f, 2000, 1.0f, 0.3)), "top_k between the candidates and vocab");
  EXPECT_EQ(UndecidedReason(flat.data(), 5000, Row(1.0f, 3, 1.0f, 0.3)), "ties with the k-th past the candidates");
  EXPECT_EQ(UndecidedReason(small.data(), 3, Row(1.0f, 1, 1.0f, 0.3)), "");
  const std::vector<float> shared_max = {3, 1, 3};
  EXPECT_EQ(UndecidedReason(shared_max.data(), 3, Row(1.0f, 1, 1.0f, 0.3)), "ties with the k-th past the candidates");
  EXPECT_EQ(UndecidedReason(flat.data(), 5000, Row(1.0f, 0, 0.9f, 0.3)), "nucleus beyond the candidates");
  EXPECT_EQ(UndecidedReason(flat.data(), 5000, Row(1.0f, 0, 1.0f, 0.9)), "draw beyond the candidates");
  EXPECT_EQ(UndecidedReason(flat.data(), 5000, Row(1.0f, 0, 1.0f, 0.12345)), "");                    // rank 617
  EXPECT_EQ(UndecidedReason(flat.data(), 5000, Row(1.0f, 0, 1.0f, 0.1)), "draw inside the margin");  // 500 of 5000
}

// Runs the kernel on host data; a failure (with a message) on any CUDA error.
::testing::AssertionResult SampleOnDevice(const std::vector<float>& logits, int32_t vocab,
                                          const std::vector<SamplingRow>& params, std::vector<int32_t>* ids) {
#ifndef GLMSERVE_HAVE_CUDA_KERNELS
  (void)logits, (void)vocab, (void)params, (void)ids;
  return ::testing::AssertionFailure() << "built without the CUDA kernels";
#else
  const int32_t rows = static_cast<int32_t>(params.size());
  float* d_logits = nullptr;
  SamplingRow* d_params = nullptr;
  int32_t* d_ids = nullptr;
  auto release = [&] {
    cudaFree(d_logits);
    cudaFree(d_params);
    cudaFree(d_ids);
  };
  if (cudaMalloc(&d_logits, logits.size() * sizeof(float)) != cudaSuccess ||
      cudaMalloc(&d_params, params.size() * sizeof(SamplingRow)) != cudaSuccess ||
      cudaMalloc(&d_ids, params.size() * sizeof(int32_t)) != cudaSuccess) {
    release();
    return ::testing::AssertionFailure() << "cudaMalloc failed";
  }
  cudaMemcpy(d_logits, logits.data(), logits.size() * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(d_params, params.data(), params.size() * sizeof(SamplingRow), cudaMemcpyHostToDevice);
  cudaMemset(d_ids, 0xAB, params.size() * sizeof(int32_t));
  if (!SampleRowsCuda(d_logits, rows, vocab, d_params, d_ids, nullptr)) {
    release();
    return ::testing::AssertionFailure() << "SampleRowsCuda returned false";
  }
  const cudaError_t synced = cudaDeviceSynchronize();
  ids->assign(rows, -2);
  cudaMemcpy(ids->data(), d_ids, ids->size() * sizeof(int32_t), cudaMemcpyDeviceToHost);
  release();
  if (synced != cudaSuccess) return ::testing::AssertionFailure() << cudaGetErrorString(synced);
  return ::testing::AssertionSuccess();
#endif
}

enum class Shape { kFlat, kPeaked, kBf16Ties, kFewValues, kMostlyMasked, kSignedZeros, kNarrow };

// Logits like an LM head's: gaussian, or with a few strongly preferred tokens, or rounded to
// bf16 (many exact ties, as the fp32 copy of bf16 logits has), or a handful of distinct values
// (one exact value shared by more elements than the kernel buffers), or nearly all masked, or
// all within a sliver of one binade (the first histogram bin overflows; refinement separates them).
std::vector<float> MakeRow(Shape shape, int32_t vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int32_t> any_id(0, vocab - 1);
  std::vector<float> row(vocab);
  switch (shape) {
    case Shape::kFlat:
      for (float& v : row) v = 2.0f * normal(rng);
      break;
    case Shape::kPeaked:
      for (float& v : row) v = normal(rng);
      for (int k = 0; k < 8; ++k) row[any_id(rng)] += 8.0f + 2.0f * k;
      break;
    case Shape::kBf16Ties:
      for (float& v : row) v = testutil::TruncateToBf16(3.0f * normal(rng));
      for (int k = 0; k < 4; ++k) row[any_id(rng)] = 14.0f;  // tied top tokens
      break;
    case Shape::kFewValues:
      for (float& v : row) v = std::round(normal(rng)) * 0.5f;
      break;
    case Shape::kMostlyMasked:
      std::fill(row.begin(), row.end(), -kInf);
      for (int k = 0; k < 6; ++k) row[any_id(rng)] = normal(rng);
      break;
    case Shape::kNarrow:
      for (float& v : row) v = 5.0f + 0.01f * normal(rng);
      break;
    case Shape::kSignedZeros:
      for (float& v : row) v = -std::abs(normal(rng)) - 1.0f;
      for (int k = 0; k < 6; ++k) row[any_id(rng)] = (k % 2 == 0) ? -0.0f : 0.0f;
      break;
  }
  return row;
}

struct Tally {
  int decided = 0;
  int undecided = 0;
};

// Compares the kernel with the reference on `rows` rows of each shape; every decided row must be
// the reference's id, every undecided one must have a reason the contract allows.
void CompareWithReference(int32_t vocab, int rows_per_shape, uint32_t seed, Tally* tally) {
  std::mt19937 rng(seed);
  const std::vector<float> temperatures = {0.0f, 0.3f, 0.7f, 1.0f, 1.6f};
  const std::vector<int32_t> top_ks = {0, 0, 0, 1, 2, 20, 50, 1000, 1024, 1025, 4000, vocab, vocab + 7};
  const std::vector<float> top_ps = {1.0f, 1.0f, 0.95f, 0.9f, 0.8f, 0.5f, 1e-6f, 0.0f, 0.999f};
  std::uniform_int_distribution<size_t> pick(0, 1 << 30);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (Shape shape : {Shape::kFlat, Shape::kPeaked, Shape::kBf16Ties, Shape::kFewValues, Shape::kMostlyMasked,
                      Shape::kSignedZeros, Shape::kNarrow}) {
    std::vector<float> logits;
    std::vector<SamplingRow> params;
    for (int r = 0; r < rows_per_shape; ++r) {
      const std::vector<float> row = MakeRow(shape, vocab, rng);
      logits.insert(logits.end(), row.begin(), row.end());
      SamplingRow p = Row(temperatures[pick(rng) % temperatures.size()], top_ks[pick(rng) % top_ks.size()],
                          top_ps[pick(rng) % top_ps.size()], uniform(rng));
      if (r % 17 == 0) p.uniform = 0.0;
      if (r % 19 == 0) p.uniform = 0.9999999;
      params.push_back(p);
    }
    std::vector<int32_t> want(rows_per_shape), got;
    SampleRowsReference(logits.data(), rows_per_shape, vocab, params.data(), want.data());
    ASSERT_TRUE(SampleOnDevice(logits, vocab, params, &got));
    for (int r = 0; r < rows_per_shape; ++r) {
      const SamplingRow& p = params[r];
      const float* row = logits.data() + static_cast<int64_t>(r) * vocab;
      const std::string describe =
          "vocab " + std::to_string(vocab) + " shape " + std::to_string(static_cast<int>(shape)) + " row " +
          std::to_string(r) + " temperature " + std::to_string(p.temperature) + " top_k " + std::to_string(p.top_k) +
          " top_p " + std::to_string(p.top_p) + " uniform " + std::to_string(p.uniform);
      if (got[r] == -1) {
        ++tally->undecided;
        EXPECT_NE(UndecidedReason(row, vocab, p), "") << "undecided without a reason: " << describe;
      } else {
        ++tally->decided;
        EXPECT_EQ(got[r], want[r]) << describe;
      }
    }
  }
}

TEST(SampleRowsCuda, MatchesReferenceOnSmallOddVocab) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  Tally tally;
  CompareWithReference(1000, 400, 1, &tally);
  CompareWithReference(7, 200, 2, &tally);
  CompareWithReference(1, 20, 3, &tally);
  CompareWithReference(1025, 200, 4, &tally);
  std::printf("small vocabs: %d decided, %d undecided\n", tally.decided, tally.undecided);
  // vocab <= kSamplingCandidates: only NaN/inf rows and margins may be undecided.
  EXPECT_GT(tally.decided, 9 * tally.undecided);
}

TEST(SampleRowsCuda, MatchesReferenceOnGlm4Vocab) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  Tally tally;
  CompareWithReference(151552, 48, 5, &tally);
  std::printf("vocab 151552: %d decided, %d undecided\n", tally.decided, tally.undecided);
  EXPECT_GT(tally.decided, tally.undecided);
}

TEST(SampleRowsCuda, DecidesPeakedRowsWithTheDefaultNucleus) {
  // The common serving case: whole vocab kept, top_p 0.8 .. 1, a confident model. The nucleus
  // closes (or the draw lands) within the candidates, so the device decides nearly every row.
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  const int32_t vocab = 151552, rows = 64;
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  for (int r = 0; r < rows; ++r) {
    const std::vector<float> row = MakeRow(Shape::kPeaked, vocab, rng);
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back(Row(r % 2 ? 0.8f : 1.0f, 0, r % 3 == 0 ? 1.0f : 0.8f, uniform(rng)));
  }
  std::vector<int32_t> want(rows), got;
  SampleRowsReference(logits.data(), rows, vocab, params.data(), want.data());
  ASSERT_TRUE(SampleOnDevice(logits, vocab, params, &got));
  int decided = 0;
  for (int r = 0; r < rows; ++r) {
    if (got[r] == -1) {
      EXPECT_NE(UndecidedReason(logits.data() + static_cast<int64_t>(r) * vocab, vocab, params[r]), "") << r;
      continue;
    }
    ++decided;
    EXPECT_EQ(got[r], want[r]) << r;
  }
  EXPECT_GE(decided, rows * 9 / 10);
}

TEST(SampleRowsCuda, TiesWithTheKthAreKeptOrLeftToTheHost) {
  // Exact ties with the k-th score straddling the candidate cut exercise the ranked gather and the
  // whole-buffer sort. 40 ids share the top score, the rest are masked: any top_k up to 40 keeps all
  // 40 (probs 1 each), and the draw picks the floor(40 u)-th lowest of them. Ties past the
  // candidates (a flat row) and a shared maximum under top_k 1 are the host's.
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  const int32_t vocab = 151552;
  std::vector<int32_t> tied_ids;
  for (int32_t k = 0; k < 40; ++k) tied_ids.push_back(37 + 3779 * k);
  std::vector<float> tied_row(vocab, -kInf);
  for (int32_t id : tied_ids) tied_row[id] = 0.25f;
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  for (int32_t k : {2, 3, 17, 39}) {
    logits.insert(logits.end(), tied_row.begin(), tied_row.end());
    params.push_back(Row(1.0f, k, 1.0f, 0.4321));
  }
  std::vector<float> flat_row(vocab, 0.25f);
  for (int32_t k : {3, 1024}) {
    logits.insert(logits.end(), flat_row.begin(), flat_row.end());
    params.push_back(Row(1.0f, k, 1.0f, 0.4321));
  }
  std::vector<float> two_maxima(vocab, -1.0f);
  two_maxima[10] = two_maxima[20] = 2.0f;
  logits.insert(logits.end(), two_maxima.begin(), two_maxima.end());
  params.push_back(Row(1.0f, 1, 1.0f, 0.75));
  std::vector<int32_t> want(params.size()), got;
  SampleRowsReference(logits.data(), static_cast<int32_t>(params.size()), vocab, params.data(), want.data());
  ASSERT_TRUE(SampleOnDevice(logits, vocab, params, &got));
  for (size_t r = 0; r < 4; ++r) {
    EXPECT_EQ(want[r], tied_ids[static_cast<size_t>(0.4321 * 40)]) << r;
    EXPECT_EQ(got[r], want[r]) << r;
  }
  for (size_t r = 4; r < 6; ++r) {
    EXPECT_EQ(want[r], static_cast<int32_t>(0.4321 * vocab)) << r;
    EXPECT_EQ(got[r], -1) << r;
  }
  EXPECT_EQ(want[6], 20);
  EXPECT_EQ(got[6], -1);
}

TEST(SampleRowsCuda, NonFiniteRowsAreLeftToTheHostButGreedyStillDecides) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  const int32_t vocab = 3000;
  std::vector<float> logits;
  std::vector<SamplingRow> params;
  auto add = [&](std::vector<float> row, SamplingRow p) {
    logits.insert(logits.end(), row.begin(), row.end());
    params.push_back(p);
  };
  std::vector<float> base(vocab, 1.0f);
  std::vector<float> nan_row = base, inf_row = base, masked_row(vocab, -kInf), overflow_row = base;
  nan_row[17] = std::nanf("");
  inf_row[2500] = kInf;
  inf_row[2501] = kInf;
  overflow_row[5] = 3e38f;  // / 0.5 overflows to +inf
  add(nan_row, Row(1.0f, 0, 0.9f, 0.5));
  add(nan_row, Row(0.0f, 0, 1.0f, 0.5));
  add(inf_row, Row(1.0f, 50, 1.0f, 0.5));
  add(masked_row, Row(1.0f, 0, 1.0f, 0.5));
  add(overflow_row, Row(0.5f, 0, 1.0f, 0.5));
  add(base, Row(1.0f, 0, 1.0f, 1.0));        // uniform outside [0, 1)
  add(inf_row, Row(0.0f, 0, 1.0f, 0.5));     // greedy: first +inf
  add(masked_row, Row(0.0f, 0, 1.0f, 0.5));  // greedy over all -inf: id 0
  std::vector<int32_t> got;
  ASSERT_TRUE(SampleOnDevice(logits, vocab, params, &got));
  EXPECT_EQ(got, (std::vector<int32_t>{-1, -1, -1, -1, -1, -1, 2500, 0}));
}

TEST(SampleRowsCuda, RejectsBadShapesAndAcceptsNoRows) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  float* d_logits = nullptr;
  ASSERT_EQ(cudaMalloc(&d_logits, 16), cudaSuccess);
  SamplingRow* d_params = nullptr;
  ASSERT_EQ(cudaMalloc(&d_params, sizeof(SamplingRow)), cudaSuccess);
  int32_t* d_ids = nullptr;
  ASSERT_EQ(cudaMalloc(&d_ids, 4), cudaSuccess);
  EXPECT_TRUE(SampleRowsCuda(d_logits, 0, 4, d_params, d_ids, nullptr));
  EXPECT_FALSE(SampleRowsCuda(d_logits, 1, 0, d_params, d_ids, nullptr));
  EXPECT_FALSE(SampleRowsCuda(d_logits, -1, 4, d_params, d_ids, nullptr));
  EXPECT_FALSE(SampleRowsCuda(nullptr, 1, 4, d_params, d_ids, nullptr));
  cudaFree(d_logits);
  cudaFree(d_params);
  cudaFree(d_ids);
#endif
}

// ---- Penalties and stop masking (ApplyPenalties, CountTokens) ----

PenaltyRow Penalty(int32_t slot, float repetition, float frequency, float presence, int32_t stop_begin,
                   int32_t stop_count) {
  PenaltyRow p;
  p.slot = slot;
  p.repetition = repetition;
  p.frequency = frequency;
  p.presence = presence;
  p.stop_begin = stop_begin;
  p.stop_count = stop_count;
  return p;
}

TEST(PenaltyReference, HandComputedRow) {
  // Slot 1 of 2 (slot 0 is garbage that must not be read): seen {0, 1, 3}, counts {1: 2, 3: 1}.
  // Repetition 2, frequency 0.25, presence 0.5, stop id 4:
  //   id 0: 2.0 / 2 = 1.0 (seen, never generated)   id 1: -1.0 * 2 = -2.0, - (0.25 * 2 + 0.5) = -3.0
  //   id 2: 0.5 (not seen)                          id 3: 3.0 / 2 = 1.5, - (0.25 * 1 + 0.5) = 0.75
  //   id 4: -inf (stop id before min_new_tokens)
  const int32_t vocab = 5;
  std::vector<int32_t> counts = {9, 9, 9, 9, 9, 0, 2, 0, 1, 0};
  std::vector<uint8_t> seen = {1, 1, 1, 1, 1, 1, 1, 0, 1, 0};
  const std::vector<int32_t> stops = {99, 4, -3};
  std::vector<float> logits = {2.0f, -1.0f, 0.5f, 3.0f, 1.0f, 2.0f, -1.0f, 0.5f, 3.0f, 1.0f};
  const std::vector<PenaltyRow> params = {Penalty(1, 2.0f, 0.25f, 0.5f, 0, 3), Penalty(-1, 2.0f, 0.25f, 0.5f, 0, 0)};
  ApplyPenaltiesReference(logits.data(), 2, vocab, params.data(), counts.data(), seen.data(), stops.data());
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -3.0f, 0.5f, 0.75f, -kInf, 2.0f, -1.0f, 0.5f, 3.0f, 1.0f}));
  // Frequency 0.1 three times: 0.1f * 3 rounds to 0.3000000119 (the float above 0.3), and
  // 1.0 - that is exactly 0.7f.
  std::vector<float> one = {1.0f, 1.0f, 1.0f, 1.0f, 1.0f};
  counts[5 + 2] = 3;
  seen[5 + 2] = 1;
  const PenaltyRow frequency_only = Penalty(1, 1.0f, 0.1f, 0.0f, 0, 0);
  ApplyPenaltiesReference(one.data(), 1, vocab, &frequency_only, counts.data(), seen.data(), nullptr);
  EXPECT_EQ(one[2], 0.7f);
  EXPECT_EQ(one[0], 1.0f);  // repetition 1: seen ids without counts are untouched
}

TEST(PenaltyReference, CountTokensSkipsUndecidedRowsAndCountsOnlyGenerated) {
  const int32_t vocab = 4;
  std::vector<int32_t> counts(2 * vocab, 0);
  std::vector<uint8_t> seen(2 * vocab, 0);
  const std::vector<int32_t> slots = {0, 0, 1, -1, 1, 1};
  const std::vector<int32_t> ids = {2, 2, 3, 1, -1, 0};
  const std::vector<uint8_t> counted = {0, 1, 1, 1, 1, 0};
  CountTokensReference(counts.data(), seen.data(), vocab, slots.data(), ids.data(), counted.data(), 6);
  EXPECT_EQ(counts, (std::vector<int32_t>{0, 0, 1, 0, 0, 0, 0, 1}));
  EXPECT_EQ(seen, (std::vector<uint8_t>{0, 0, 1, 0, 1, 0, 0, 1}));
  CountTokensReference(counts.data(), seen.data(), vocab, slots.data(), ids.data(), nullptr, 6);  // all counted
  EXPECT_EQ(counts, (std::vector<int32_t>{0, 0, 3, 0, 1, 0, 0, 2}));
}

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
// A device copy of a host vector, freed with the object.
template <typename T>
struct DeviceVector {
  T* data = nullptr;
  size_t size = 0;
  explicit DeviceVector(const std::vector<T>& host) : size(host.size()) {
    if (cudaMalloc(&data, std::max<size_t>(1, size) * sizeof(T)) != cudaSuccess) data = nullptr;
    if (data != nullptr && size > 0) cudaMemcpy(data, host.data(), size * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DeviceVector() { cudaFree(data); }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  std::vector<T> Read() const {
    std::vector<T> host(size);
    if (size > 0) cudaMemcpy(host.data(), data, size * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
};

// The executor's whole device pipeline on random sequences: tables built by CountTokensCuda from
// the histories (prompt seen, generated counted), ApplyPenaltiesCuda on the rows, SampleRowsCuda
// on the penalised rows, then CountTokensCuda on the sampled ids. Against the CPU references,
// which tests/runtime/sampler_test.cc ties to SampleNextToken: tables equal, penalised scores
// equal bit for bit, every decided id equal (an undecided one needs the sampling contract's reason).
void ComparePenaltyPipeline(int32_t vocab, int32_t rows, uint32_t seed, Tally* tally) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, 1 << 30);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int32_t slots = rows + 3;  // some slots unused, rows in shuffled slots
  std::vector<int32_t> slot_of_row(slots);
  std::iota(slot_of_row.begin(), slot_of_row.end(), 0);
  std::shuffle(slot_of_row.begin(), slot_of_row.end(), rng);
  const std::vector<float> repetitions = {1.0f, 1.1f, 1.3f, 0.9f};
  const std::vector<float> frequencies = {0.0f, 0.2f, 0.1f, 1.5f, -0.3f};
  const std::vector<float> presences = {0.0f, 0.3f, 0.1f};
  const std::vector<float> temperatures = {0.0f, 0.0f, 0.7f, 1.0f};
  const std::vector<float> top_ps = {1.0f, 0.85f, 0.95f};
  const std::vector<int32_t> top_ks = {0, 0, 50};
  std::vector<int32_t> entry_slots, entry_ids;
  std::vector<uint8_t> entry_counted;
  std::vector<PenaltyRow> penalties;
  std::vector<SamplingRow> sampling;
  std::vector<int32_t> stops;
  std::vector<float> logits;
  for (int32_t r = 0; r < rows; ++r) {
    const bool penalised = r % 5 != 4;
    const int32_t slot = penalised ? slot_of_row[r] : -1;
    const int32_t prompt = 1 + pick(rng) % 200, generated = pick(rng) % 100;
    const int32_t narrow = std::max(1, std::min(vocab, 300));  // repeats are common
    for (int32_t i = 0; i < prompt + generated; ++i) {
      entry_slots.push_back(slot);
      entry_ids.push_back(i % 7 == 0 ? pick(rng) % vocab : pick(rng) % narrow);
      entry_counted.push_back(i >= prompt ? 1 : 0);
    }
    const int32_t stop_count = r % 3 == 0 ? 1 + pick(rng) % 3 : 0;
    penalties.push_back(Penalty(slot, repetitions[pick(rng) % repetitions.size()],
                                frequencies[pick(rng) % frequencies.size()], presences[pick(rng) % presences.size()],
                                static_cast<int32_t>(stops.size()), stop_count));
    for (int32_t k = 0; k < stop_count; ++k) stops.push_back(k == 2 ? vocab + 5 : pick(rng) % narrow);
    sampling.push_back(Row(temperatures[pick(rng) % temperatures.size()], top_ks[pick(rng) % top_ks.size()],
                           top_ps[pick(rng) % top_ps.size()], uniform(rng)));
    const std::vector<float> row =
        MakeRow(r % 2 ? Shape::kBf16Ties : (r % 3 ? Shape::kPeaked : Shape::kFlat), vocab, rng);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  if (stops.empty()) stops.push_back(0);
  const int32_t entries = static_cast<int32_t>(entry_ids.size());

  // Tables: host reference and device.
  std::vector<int32_t> counts(static_cast<size_t>(slots) * vocab, 0);
  std::vector<uint8_t> seen(static_cast<size_t>(slots) * vocab, 0);
  CountTokensReference(counts.data(), seen.data(), vocab, entry_slots.data(), entry_ids.data(), entry_counted.data(),
                       entries);
  DeviceVector<int32_t> d_counts(std::vector<int32_t>(counts.size(), 0));
  DeviceVector<uint8_t> d_seen(std::vector<uint8_t>(seen.size(), 0));
  DeviceVector<int32_t> d_entry_slots(entry_slots), d_entry_ids(entry_ids);
  DeviceVector<uint8_t> d_entry_counted(entry_counted);
  ASSERT_TRUE(CountTokensCuda(d_counts.data, d_seen.data, vocab, d_entry_slots.data, d_entry_ids.data,
                              d_entry_counted.data, entries, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(d_counts.Read(), counts);
  ASSERT_EQ(d_seen.Read(), seen);

  // Penalties: bit for bit.
  std::vector<float> want = logits;
  ApplyPenaltiesReference(want.data(), rows, vocab, penalties.data(), counts.data(), seen.data(), stops.data());
  DeviceVector<float> d_logits(logits);
  DeviceVector<PenaltyRow> d_penalties(penalties);
  DeviceVector<int32_t> d_stops(stops);
  ASSERT_TRUE(ApplyPenaltiesCuda(d_logits.data, rows, vocab, d_penalties.data, d_counts.data, d_seen.data, d_stops.data,
                                 nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<float> got = d_logits.Read();
  ASSERT_EQ(got.size(), want.size());
  int64_t changed = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    changed += std::memcmp(&want[i], &logits[i], sizeof(float)) != 0;
    ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
        << "row " << i / vocab << " id " << i % vocab << ": device " << got[i] << " reference " << want[i] << " raw "
        << logits[i];
  }
  EXPECT_GT(changed, rows);  // the penalties did something

  // Sampling on the penalised rows, then the post-step update from the device's ids.
  std::vector<int32_t> want_ids(rows);
  SampleRowsReference(want.data(), rows, vocab, sampling.data(), want_ids.data());
  DeviceVector<SamplingRow> d_sampling(sampling);
  DeviceVector<int32_t> d_ids(std::vector<int32_t>(rows, -2));
  ASSERT_TRUE(SampleRowsCuda(d_logits.data, rows, vocab, d_sampling.data, d_ids.data, nullptr));
  std::vector<int32_t> row_slots;
  for (const PenaltyRow& p : penalties) row_slots.push_back(p.slot);
  DeviceVector<int32_t> d_row_slots(row_slots);
  ASSERT_TRUE(CountTokensCuda(d_counts.data, d_seen.data, vocab, d_row_slots.data, d_ids.data, nullptr, rows, nullptr));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const std::vector<int32_t> got_ids = d_ids.Read();
  for (int32_t r = 0; r < rows; ++r) {
    const std::string describe = "vocab " + std::to_string(vocab) + " row " + std::to_string(r) + " temperature " +
                                 std::to_string(sampling[r].temperature);
    if (got_ids[r] == -1) {
      ++tally->undecided;
      EXPECT_NE(UndecidedReason(want.data() + static_cast<int64_t>(r) * vocab, vocab, sampling[r]), "") << describe;
    } else {
      ++tally->decided;
      EXPECT_EQ(got_ids[r], want_ids[r]) << describe;
    }
  }
  CountTokensReference(counts.data(), seen.data(), vocab, row_slots.data(), got_ids.data(), nullptr, rows);
  EXPECT_EQ(d_counts.Read(), counts);
  EXPECT_EQ(d_seen.Read(), seen);
}
#endif

TEST(ApplyPenaltiesCuda, PipelineMatchesReferenceOnSmallVocabs) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  Tally tally;
  ComparePenaltyPipeline(1000, 64, 11, &tally);
  ComparePenaltyPipeline(7, 16, 12, &tally);
  ComparePenaltyPipeline(4099, 40, 13, &tally);
  std::printf("penalised small vocabs: %d decided, %d undecided\n", tally.decided, tally.undecided);
  EXPECT_GT(tally.decided, 9 * tally.undecided);
#endif
}

TEST(ApplyPenaltiesCuda, PipelineMatchesReferenceOnGlm4Vocab) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  Tally tally;
  ComparePenaltyPipeline(151552, 48, 14, &tally);
  std::printf("penalised vocab 151552: %d decided, %d undecided\n", tally.decided, tally.undecided);
  EXPECT_GT(tally.decided, 2 * tally.undecided);
#endif
}

TEST(ApplyPenaltiesCuda, RejectsBadShapesAndAcceptsNoRows) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  DeviceVector<float> d_logits(std::vector<float>(4, 0.0f));
  DeviceVector<PenaltyRow> d_params(std::vector<PenaltyRow>(1));
  EXPECT_TRUE(ApplyPenaltiesCuda(d_logits.data, 0, 4, d_params.data, nullptr, nullptr, nullptr, nullptr));
  EXPECT_FALSE(ApplyPenaltiesCuda(d_logits.data, 1, 0, d_params.data, nullptr, nullptr, nullptr, nullptr));
  EXPECT_FALSE(ApplyPenaltiesCuda(nullptr, 1, 4, d_params.data, nullptr, nullptr, nullptr, nullptr));
  EXPECT_TRUE(ApplyPenaltiesCuda(d_logits.data, 1, 4, d_params.data, nullptr, nullptr, nullptr, nullptr));
  EXPECT_TRUE(CountTokensCuda(nullptr, nullptr, 4, nullptr, nullptr, nullptr, 0, nullptr));
  EXPECT_FALSE(CountTokensCuda(nullptr, nullptr, 4, nullptr, nullptr, nullptr, 1, nullptr));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
#endif
}

}  // namespace
}  // namespace glmserve::kernels
