#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace glmserve {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

double SamplingUniform(uint64_t seed, int32_t step) {
  const uint64_t bits = SplitMix64(SplitMix64(seed) ^ (static_cast<uint64_t>(step) * 0xd1342543de82ef95ULL));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

int32_t SampleNextToken(const float* logits, int32_t vocab_size, const GenerationParams& params,
                        const std::vector<int32_t>& stop_ids, int32_t num_generated,
                        const std::vector<int32_t>* history) {
  constexpr float kMasked = -std::numeric_limits<float>::infinity();
  std::vector<float> scores(logits, logits + vocab_size);
  if (params.sampling.has_penalties() && history != nullptr && num_generated > 0) {
    const size_t n = std::min(history->size(), static_cast<size_t>(num_generated));
    std::vector<int32_t> counts;
    std::vector<int32_t> seen;
    counts.assign(vocab_size, 0);
    for (size_t i = history->size() - n; i < history->size(); ++i) {
      const int32_t id = (*history)[i];
      if (id < 0 || id >= vocab_size) continue;
      if (counts[id]++ == 0) seen.push_back(id);
    }
    for (int32_t id : seen) {
      scores[id] -= params.sampling.frequency_penalty * static_cast<float>(counts[id]) +
                    params.sampling.presence_penalty;
    }
  }
  if (num_generated < params.min_new_tokens) {
    for (int32_t id : stop_ids) {
      if (id >= 0 && id < vocab_size) scores[id] = kMasked;
    }
  }
  const SamplingParams& s = params.sampling;
  if (s.temperature <= 0.0f) {
    // First maximum, like torch.argmax.
    return static_cast<int32_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
  }
  for (float& v : scores) v /= s.temperature;

  std::vector<int32_t> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  // Stable: equal scores keep id order so the draw is reproducible across platforms.
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  size_t keep = order.size();
  if (s.top_k > 0) keep = std::min<size_t>(keep, static_cast<size_t>(s.top_k));
  const float max_score = scores[order[0]];
  std::vector<double> probs(keep);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    probs[i] = scores[order[i]] == kMasked ? 0.0 : std::exp(static_cast<double>(scores[order[i]] - max_score));
    total += probs[i];
  }
  if (s.top_p > 0.0f && s.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double mass = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      mass += probs[i] / total;
      if (mass >= s.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  }
  const double target = SamplingUniform(s.seed, num_generated) * total;
  double running = 0;
  for (size_t i = 0; i < keep; ++i) {
    running += probs[i];
    if (target < running) return order[i];
  }
  return order[keep - 1];
}

}  // namespace glmserve
