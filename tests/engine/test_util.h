// Shared helpers for the engine tests.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"

namespace glmserve::testing {

inline std::vector<int32_t> MakePrompt(int32_t seed, int32_t len, int32_t vocab = 1000) {
  std::vector<int32_t> p;
  for (int32_t i = 0; i < len; ++i) p.push_back((seed * 7919 + i * 13 + 1) % vocab);
  return p;
}

inline InferenceRequest MakeRequest(const std::string& id, std::vector<int32_t> prompt, int32_t max_new,
                                    int32_t min_new = 0, std::vector<int32_t> stop_ids = {}) {
  InferenceRequest r;
  r.request_id = id;
  r.input_ids = std::move(prompt);
  r.params.max_new_tokens = max_new;
  r.params.min_new_tokens = min_new;
  r.params.stop_token_ids = std::move(stop_ids);
  return r;
}

inline ModelInfo TestModelInfo(int32_t vocab = 1000) {
  ModelInfo info;
  info.architecture = "fake";
  info.vocab_size = vocab;
  info.max_position_embeddings = 4096;
  return info;
}

}  // namespace glmserve::testing
