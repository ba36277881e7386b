// Plain C++ types shared by the runtime, the scheduler and the front ends. No LibTorch here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace glmserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax); otherwise logits are divided by it
  float top_p = 1.0f;        // nucleus mass kept, in (0, 1]; 1 keeps everything
  int32_t top_k = 0;         // keep the k most likely tokens (and ties with the k-th); 0 = no limit
  uint64_t seed = 0;         // per-request RNG seed; same seed, same prompt, same params -> same ids
  // OpenAI-style penalties over the ids generated so far (not the prompt), applied to the logits
  // before everything else: logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0).
  // Either non-zero makes a row need its history (and its logits on the host).
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  // transformers' / vLLM's repetition penalty over every id the sequence holds (prompt and
  // generated): a logit > 0 is divided by it, one <= 0 multiplied. 1 = off; must be > 0.
  float repetition_penalty = 1.0f;
  bool has_penalties() const {
    return frequency_penalty != 0.0f || presence_penalty != 0.0f || repetition_penalty != 1.0f;
  }
};

struct GenerationParams {
  int32_t max_new_tokens = 16;  // generation stops after this many new tokens (finish: length)
  int32_t min_new_tokens = 0;   // stop ids are masked out until this many new tokens exist
  SamplingParams sampling;
  // Generation stops after emitting any of these (the id is included in the output, as in
  // transformers). Empty = the model's eos ids from config.json / generation_config.json.
  std::vector<int32_t> stop_token_ids;
  // vLLM's ignore_eos: the model's eos ids neither end the output nor are masked (they may appear
  // in it); stop_token_ids alone stop it, none when empty.
  bool ignore_eos = false;
};

// The ids that end `params`' output: its own, else the model's `eos_token_ids`.
inline const std::vector<int32_t>& StopIds(const GenerationParams& params, const std::vector<int32_t>& eos_token_ids) {
  return params.ignore_eos || !params.stop_token_ids.empty() ? params.stop_token_ids : eos_token_ids;
}

// One preprocessed image of a prompt, as the vision encoder takes it (runtime/vision's
// Glm4vImageProcessor makes it from PNG/JPEG bytes).
// Floats of `codes` ([rows, patch_dim] row-major, channel-major inside a row): table[channel * 256
// + code], the channel being column / (patch_dim / 3).
std::vector<float> ExpandPixelCodes(const std::vector<uint8_t>& codes, const std::vector<float>& table,
                                    int64_t patch_dim);

struct ImageInput {
  // Patch grid: pixel_codes has grid_t * grid_h * grid_w rows of patch_dim values, in
  // transformers' order (merge_size x merge_size blocks of patches, block-major; inside a row
  // (channel, frame, y, x)).
  int32_t grid_t = 1;
  int32_t grid_h = 0;
  int32_t grid_w = 0;
  int32_t patch_dim = 0;
  // The resized image's uint8 values in pixel_values' layout; value_table[channel * 256 + code]
  // is the float the vision tower takes (rescaled and normalized as the processor rounds it). A
  // quarter of the floats' bytes to copy to the device, which looks the floats up itself.
  std::vector<uint8_t> pixel_codes;
  std::vector<float> value_table;  // 3 * 256
  // transformers' pixel_values for this image, [num_patches, patch_dim] row-major.
  std::vector<float> PixelValues() const { return ExpandPixelCodes(pixel_codes, value_table, patch_dim); }
  // Image tokens this image takes in the prompt: patches / spatial_merge_size^2.
  int32_t num_tokens = 0;
  // The size the image was resized to (usage reports and request logs say what the model saw).
  int32_t resized_height = 0;
  int32_t resized_width = 0;
  // Host time the front end spent on this image before the engine saw it (request logs: where a
  // request's time went before its first step).
  double decode_ms = 0;      // PNG / JPEG decode
  double preprocess_ms = 0;  // resize, patch order, pixel codes
  int64_t num_patches() const { return int64_t{grid_t} * grid_h * grid_w; }
};

// A glm4v prompt's images and the 3-D rotary positions (temporal, height, width) they give its
// tokens, as transformers' Glm4vModel.get_rope_index computes them. Immutable once built
// (runtime/vision/multimodal_prompt.h), shared by the request and the executor.
struct MultimodalPrompt {
  std::vector<ImageInput> images;  // in prompt order
  // Prompt index of each image's first image token; image k covers
  // [image_offsets[k], image_offsets[k] + images[k].num_tokens).
  std::vector<int32_t> image_offsets;
  int32_t prompt_len = 0;
  // positions[c * prompt_len + i]: component c (0 temporal, 1 height, 2 width) of prompt token i.
  std::vector<int32_t> positions;
  // Past the prompt every component of sequence index i is i + rope_delta (max position + 1 -
  // prompt_len; negative when images are wider than they are long in tokens).
  int32_t rope_delta = 0;

  int64_t Position(int component, int64_t index) const {
    return index < prompt_len ? positions[static_cast<size_t>(component) * prompt_len + index] : index + rope_delta;
  }
  // True when index's three components are equal, so the ordinary 1-D rotation at
  // Position(0, index) is the 3-D one (text tokens, everything past the prompt).
  bool IsPlain(int64_t index) const {
    return index >= prompt_len || (positions[index] == positions[prompt_len + index] &&
                                   positions[index] == positions[2 * static_cast<size_t>(prompt_len) + index]);
  }
  int64_t num_image_tokens() const {
    int64_t n = 0;
    for (const ImageInput& image : images) n += image.num_tokens;
    return n;
  }
};

enum class FinishReason {
  kUnspecified = 0,
  kLength,     // max_new_tokens reached
  kStop,       // a stop id was generated
  kCancelled,  // the client went away or cancelled
  kDeadline,   // the request's deadline passed
  kError,      // failed; see the accompanying status
};
const char* FinishReasonName(FinishReason reason);  // "length", "stop", ...

// What a loaded model is, as reported by `inspect`, GetModelInfo and logs.
struct ModelInfo {
  std::string directory;
  std::string architecture;   // "chatglm" | "glm" | "glm4" | "glm4v"
  std::string source_format;  // "safetensors", "safetensors-sharded", "pytorch-bin", "pytorch-bin-sharded"
  std::string stored_dtype;   // dtype of the weights on disk: "float32" | "float16" | "bfloat16" | "mixed"
  std::string compute_dtype;  // dtype used for compute: "float32" on CPU
  std::string device;         // "cpu" or "cuda:N"
  int64_t parameter_count = 0;
  int32_t num_layers = 0;
  int32_t num_attention_heads = 0;
  int32_t num_key_value_heads = 0;
  int32_t head_dim = 0;
  int32_t hidden_size = 0;
  int32_t vocab_size = 0;
  int32_t max_position_embeddings = 0;
  std::vector<int32_t> eos_token_ids;
  // Tokens the KV pool holds (blocks x block size), set by the engine; 0 = unknown. One sequence's
  // prompt plus output can never exceed it, whatever max_position_embeddings allows.
  int64_t kv_capacity_tokens = 0;

  // True when the KV pool, not the positions, bounds what one sequence can hold.
  bool context_is_kv_capacity() const {
    return kv_capacity_tokens > 0 && (max_position_embeddings <= 0 || kv_capacity_tokens < max_position_embeddings);
  }
  // Prompt plus generated tokens one sequence can hold (0 = unknown).
  int32_t max_context() const {
    return context_is_kv_capacity() ? static_cast<int32_t>(kv_capacity_tokens) : max_position_embeddings;
  }
};

}  // namespace glmserve
