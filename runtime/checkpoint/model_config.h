// config.json / generation_config.json of a GLM checkpoint, normalised across the layouts
// glmserve loads. LibTorch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace glmserve {

enum class Architecture {
  kChatGLM,  // original remote-code layout, model_type "chatglm" (ChatGLM2/3, GLM-4-9B-chat)
  kGlm,      // transformers GlmForCausalLM, model_type "glm" (GLM-4-9B-chat-hf)
  kGlm4,     // transformers Glm4ForCausalLM, model_type "glm4" (GLM-4-0414): sandwich norms
  // transformers Glm4vForConditionalGeneration, model_type "glm4v" (GLM-4.1V, AutoGLM-Phone-9B):
  // a vision tower plus a glm4 text model (text_config) with 3-D rotary positions.
  kGlm4v,
};
const char* ArchitectureName(Architecture arch);
// config.json's name for the vocabulary size of `arch` ("padded_vocab_size", "vocab_size",
// "text_config.vocab_size"), as messages name it.
const char* VocabSizeField(Architecture arch);

// Layers (text) or blocks (vision) a config may declare, and patches a side of the vision tower's
// position table: LoadModelConfig refuses more (a corrupt config would size reports and tables).
inline constexpr int32_t kMaxConfigLayers = 1024;
inline constexpr int32_t kMaxVisionPositionsSide = 4096;

// GLM-4.1V's vision tower (config.json `vision_config`, transformers' Glm4vVisionConfig) and the
// ids that place images and videos in the text. Only the weight plan and the future vision
// tower read it; the text model ignores it.
struct VisionConfig {
  int32_t depth = 24;  // vision blocks
  int32_t hidden_size = 1536;
  int32_t num_heads = 12;
  int32_t intermediate_size = 13696;  // the patch merger's MLP (the blocks' MLP is out_hidden_size wide)
  int32_t out_hidden_size = 4096;     // merger output: must equal the text hidden_size
  int32_t patch_size = 14;
  int32_t spatial_merge_size = 2;
  int32_t temporal_patch_size = 2;
  int32_t image_size = 336;  // learned position grid: (image_size / patch_size)^2 entries
  int32_t in_channels = 3;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;  // the blocks' 2-D ("axial") rotary
  bool attention_bias = false;  // the blocks' qkv carries a bias
  std::string hidden_act = "silu";
  // Glm4vConfig's top-level token ids (defaults: GLM-4.1V's tokenizer).
  int32_t image_token_id = 151343;
  int32_t image_start_token_id = 151339;
  int32_t image_end_token_id = 151340;
  int32_t video_token_id = 151344;
  int32_t video_start_token_id = 151341;
  int32_t video_end_token_id = 151342;

  int32_t head_dim() const { return num_heads > 0 ? hidden_size / num_heads : 0; }
  // (image_size / patch_size)^2; LoadModelConfig refuses a side past kMaxVisionPositionsSide, so it
  // fits.
  int32_t num_positions() const {
    const int64_t side = patch_size > 0 ? image_size / patch_size : 0;
    return static_cast<int32_t>(std::min<int64_t>(side * side, INT32_MAX));
  }
};

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
  bool attention_bias = false;         // q/k/v projections carry a bias
  bool tie_word_embeddings = false;    // lm_head reuses the embedding matrix
  bool sandwich_norms = false;         // glm4: extra norms after attention and after the MLP
  std::vector<int32_t> eos_token_ids;  // generation_config.json's, then config.json's not already listed
  int32_t pad_token_id = -1;
  // generation_config.json's sampling values, where it sets them in range: the OpenAI API's
  // defaults for requests that leave them out (as vLLM takes them). Unset: the API's own.
  std::optional<double> default_temperature;  // >= 0
  std::optional<double> default_top_p;        // (0, 1]
  std::optional<int32_t> default_top_k;       // >= 0 (0 = off)
  // generation_config.json values not taken, each "field: why" (a wrong type or range): the
  // checkpoint still loads (transformers reads the file alike), serve logs them.
  std::vector<std::string> ignored_generation_values;
  std::string torch_dtype;  // as declared in config.json (informational)
  // glm4v: rotary frequencies given to each position component (temporal, height, width), in
  // that order; sums to rotary_dim / 2. For text-only prompts the three components are equal, so
  // the rotation is the 1-D one above; empty for the text architectures.
  std::vector<int32_t> mrope_section;
  std::optional<VisionConfig> vision;  // glm4v only
  // Sizes config.json does not set, which took transformers' defaults, e.g. "hidden_size (default
  // 4096)": the weight plan names them when tensor shapes disagree.
  std::vector<std::string> defaulted_sizes;
};

// Reads `directory`/config.json and, when present, generation_config.json. Defaults for absent
// fields are transformers' class defaults, so a config loads here exactly as it loads there.
// Every problem found (invalid JSON with its position, wrong field types, unsupported options,
// inconsistent sizes) is reported at once: FAILED_PRECONDITION, one problem per line.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& directory);

// The same reading, the config returned as read with every problem added to `problems` (inspect
// checks the weights against it too); an error status only where no config could be read (no
// file, not JSON, not a GLM model), its problems in the message.
absl::StatusOr<ModelConfig> LoadModelConfigWithProblems(const std::string& directory,
                                                        std::vector<std::string>* problems);

}  // namespace glmserve
