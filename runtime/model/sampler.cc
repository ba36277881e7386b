#include "runtime/model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/sampling.h"

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
  const SamplingParams& penalties = params.sampling;
  if (penalties.has_penalties() && history != nullptr) {
    // Repetition (transformers' RepetitionPenaltyLogitsProcessor: torch.where(score < 0,
    // score * penalty, score / penalty)) over every distinct id the sequence holds, prompt included.
    if (penalties.repetition_penalty != 1.0f) {
      std::vector<uint8_t> done(vocab_size, 0);
      for (int32_t id : *history) {
        if (id < 0 || id >= vocab_size || done[id] != 0) continue;
        done[id] = 1;
        scores[id] = kernels::RepetitionPenalised(scores[id], penalties.repetition_penalty);
      }
    }
    // Frequency / presence (OpenAI) over the generated ids only.
    const size_t n = std::min(history->size(), static_cast<size_t>(std::max(num_generated, 0)));
    if (n > 0 && (penalties.frequency_penalty != 0.0f || penalties.presence_penalty != 0.0f)) {
      std::vector<int32_t> counts(vocab_size, 0);
      std::vector<int32_t> seen;
      for (size_t i = history->size() - n; i < history->size(); ++i) {
        const int32_t id = (*history)[i];
        if (id < 0 || id >= vocab_size) continue;
        if (counts[id]++ == 0) seen.push_back(id);
      }
      // The CUDA penalty kernel's own expression (kernels/sampling.h): the same bits.
      for (int32_t id : seen) {
        scores[id] = kernels::FrequencyPresencePenalised(scores[id], counts[id], penalties.frequency_penalty,
                                                         penalties.presence_penalty);
      }
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
  // Temperature, top-k, top-p and the draw: the one implementation the GPU sampler is held to
  // (kernels/sampling.h), on the penalised and masked scores.
  kernels::SamplingRow row;
  row.temperature = s.temperature;
  row.top_k = s.top_k;
  row.top_p = s.top_p;
  row.uniform = SamplingUniform(s.seed, num_generated);
  int32_t id = -1;
  kernels::SampleRowsReference(scores.data(), 1, vocab_size, &row, &id);
  if (id >= 0) return id;
  // NaN scores (a broken checkpoint) have no place in the order: take the first finite maximum.
  int32_t best = 0;
  for (int32_t i = 0; i < vocab_size; ++i) {
    if (!std::isnan(scores[i]) && (std::isnan(scores[best]) || scores[i] > scores[best])) best = i;
  }
  return best;
}

}  // namespace glmserve
