#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/sampling.h"

namespace glmserve::kernels {
namespace {

// runtime/model/sampler.cc's SampleNextToken without penalties or stop masking, step by step (the
// kernels library does not depend on the runtime; tests/runtime/sampler_test.cc checks the two
// agree).
int32_t SampleRowReference(const float* logits, int32_t vocab, const SamplingRow& p) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  const bool greedy = p.temperature <= 0.0f;
  std::vector<float> scores(logits, logits + vocab);
  if (!greedy) {
    for (float& v : scores) v /= p.temperature;
  }
  for (float v : scores) {
    if (std::isnan(v)) return -1;  // the CPU's comparisons give NaN no defined place
  }
  if (greedy) return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
  if (!(p.uniform >= 0.0 && p.uniform < 1.0)) return -1;
  // A score of +inf (a tiny temperature dividing a finite logit past float's range, or a +inf
  // logit) leaves exp(score - max) NaN, and the draw fell through to the least likely kept token.
  // The distribution's limit there is the first largest logit: taken, as greedy takes it.
  if (*std::max_element(scores.begin(), scores.end()) == std::numeric_limits<float>::infinity()) {
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  size_t keep = order.size();
  if (p.top_k > 0) keep = std::min<size_t>(keep, static_cast<size_t>(p.top_k));
  // top_k is a threshold, as in transformers' TopKLogitsWarper and vLLM: every score equal to the
  // k-th is kept too (bf16 logits tie often).
  while (keep < order.size() && scores[order[keep]] == scores[order[keep - 1]]) ++keep;
  const float max_score = scores[order[0]];
  std::vector<double> probs(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] = scores[order[i]] == kMasked ? 0.0 : std::exp(static_cast<double>(scores[order[i]] - max_score));
    total += probs[i];
  }
  if (p.top_p > 0.0f && p.top_p < 1.0f) {
    double mass = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      mass += probs[i] / total;
      if (mass >= p.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  const double target = p.uniform * total;
  double running = 0;
  for (size_t i = 0; i < keep; ++i) {
    running += probs[i];
    if (target < running) return order[i];
  }
  return order[keep - 1];
}

}  // namespace

void SampleRowsReference(const float* logits, int32_t rows, int32_t vocab, const SamplingRow* params,
                         int32_t* out_ids) {
  if (rows <= 0 || vocab <= 0 || logits == nullptr || params == nullptr || out_ids == nullptr) return;
  for (int32_t r = 0; r < rows; ++r) {
    out_ids[r] = SampleRowReference(logits + static_cast<int64_t>(r) * vocab, vocab, params[r]);
  }
}

void ApplyPenaltiesReference(float* logits, int32_t rows, int32_t vocab, const PenaltyRow* params,
                             const int32_t* counts, const uint8_t* seen, const int32_t* stop_ids) {
  if (rows <= 0 || vocab <= 0 || logits == nullptr || params == nullptr) return;
  for (int32_t r = 0; r < rows; ++r) {
    const PenaltyRow& p = params[r];
    float* row = logits + static_cast<int64_t>(r) * vocab;
    if (p.slot >= 0 && counts != nullptr && seen != nullptr) {
      const int64_t base = static_cast<int64_t>(p.slot) * vocab;
      for (int32_t id = 0; id < vocab; ++id) {
        if (seen[base + id] == 0) continue;
        row[id] = PenalisedScore(row[id], counts[base + id], p);
      }
    }
    if (stop_ids != nullptr) {
      for (int32_t k = 0; k < p.stop_count; ++k) {
        const int32_t id = stop_ids[p.stop_begin + k];
        if (id >= 0 && id < vocab) row[id] = -std::numeric_limits<float>::infinity();
      }
    }
  }
}

void CountTokensReference(int32_t* counts, uint8_t* seen, int32_t vocab, const int32_t* slots, const int32_t* ids,
                          const uint8_t* counted, int32_t n) {
  if (n <= 0 || vocab <= 0 || counts == nullptr || seen == nullptr || slots == nullptr || ids == nullptr) return;
  for (int32_t k = 0; k < n; ++k) {
    if (slots[k] < 0 || ids[k] < 0 || ids[k] >= vocab) continue;
    const int64_t at = static_cast<int64_t>(slots[k]) * vocab + ids[k];
    seen[at] = 1;
    if (counted == nullptr || counted[k] != 0) ++counts[at];
  }
}

}  // namespace glmserve::kernels
