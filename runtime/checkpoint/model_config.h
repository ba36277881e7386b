// config.json / generation_config.json of a GLM checkpoint, normalised across the three
// layouts glmserve loads. LibTorch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve {

enum class Architecture {
  kChatGLM,  // original remote-code layout, model_type "chatglm" (ChatGLM2/3, GLM-4-9B-chat)
  kGlm,      // transformers GlmForCausalLM, model_type "glm" (GLM-4-9B-chat-hf)
  kGlm4,     // transformers Glm4ForCausalLM, model_type "glm4" (GLM-4-0414): sandwich norms
};
const char* ArchitectureName(Architecture arch);

struct ModelConfig {
  Architecture architecture = Architecture::kGlm;
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_attention_heads = 0;
  int32_t num_key_value_heads = 0;
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  int32_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  // Rotated dims per head (even); the rest of the head passes through. Interleaved pairs.
  int32_t rotary_dim = 0;
  bool attention_bias = false;        // q/k/v projections carry a bias
  bool tie_word_embeddings = false;   // lm_head reuses the embedding matrix
  bool sandwich_norms = false;        // glm4: extra norms after attention and after the MLP
  std::vector<int32_t> eos_token_ids; // generation_config.json's, then config.json's not already listed
  int32_t pad_token_id = -1;
  std::string torch_dtype;            // as declared in config.json (informational)
};

// Reads `directory`/config.json and, when present, generation_config.json. Defaults for absent
// fields are transformers' class defaults, so a config loads here exactly as it loads there.
// Every problem found (invalid JSON with its position, wrong field types, unsupported options,
// inconsistent sizes) is reported at once: FAILED_PRECONDITION, one problem per line.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& directory);

}  // namespace glmserve
