// Validation of a GenerateRequest at the edge, for every front end: each field is checked before
// the engine sees the request, and a bad one is refused naming the field (in the front end's
// dialect) and its range. Prompt text and chat messages are tokenized here (front-end thread).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "server/request/media.h"
#include "server/request/request.h"

namespace glmserve {

namespace tokenizer {
class Tokenizer;
}

// Request limits of the front end (flags of `serve`).
struct FrontendLimits {
  // Largest max_new_tokens a request may ask for. Above: INVALID_ARGUMENT.
  int32_t max_new_tokens_cap = 4096;
  // Used when a request's max_new_tokens is 0 (proto3 cannot tell 0 from unset).
  int32_t default_max_new_tokens = 256;
  // Longest prompt accepted, in tokens; 0 = the model's max context.
  int32_t max_prompt_tokens = 0;
  // Largest temperature accepted.
  float max_temperature = 100.0f;
  // Longest client-supplied request_id, in bytes.
  int32_t max_request_id_bytes = 128;
  // Images: how many, how large, where file:// URLs may point (server/request/media.h).
  MediaOptions media;
};

// What the validator needs to know about the model.
struct ValidationModel {
  int32_t vocab_size = 0;
  int32_t max_context = 0;              // prompt + new tokens; 0 = unknown (not checked)
  bool context_is_kv_capacity = false;  // max_context is the KV pool's, below max_position_embeddings
  // Tokenizes prompt/messages and decodes output text; null = ids only (prompt, messages and
  // stop are refused with INVALID_ARGUMENT).
  const tokenizer::Tokenizer* tokenizer = nullptr;
  // The model's eos ids (what the engine stops on when a request has no stop_token_ids).
  std::vector<int32_t> eos_token_ids;
  // A vision model's image decoding and preprocessing; null = the model takes no images (a
  // request with any is refused naming the image).
  std::shared_ptr<const ImageSupport> images;
};

// Limits on stop strings.
inline constexpr int kMaxStopStrings = 16;
inline constexpr int kMaxStopStringBytes = 256;

// Penalty ranges (the HTTP API's too). frequency_penalty and presence_penalty: [-2, 2], 0 = off
// (OpenAI's range). repetition_penalty: (0, 10], 1 = off; the proto's 0 means unset = 1.
inline constexpr float kMinOpenAiPenalty = -2.0f;
inline constexpr float kMaxOpenAiPenalty = 2.0f;
inline constexpr float kMaxRepetitionPenalty = 10.0f;

// The longest prompt accepted, in tokens (limits and the model's context, leaving room for one
// new token); 0 = unbounded.
int32_t MaxPromptTokens(const FrontendLimits& limits, const ValidationModel& model);

// Bytes of prompt text a request asks to tokenize: its prompt and its messages' contents (a
// message's text parts are joined in its content).
int64_t PromptTextBytes(const GenerateRequest& request);

// Checks every field and fills *out (the engine's request_id is left to the session; the deadline
// is copied). Images are resolved, decoded and preprocessed here, on the caller's thread, first
// (PrepareImages: a bad image is refused before the prompt is tokenized), and the prompt's image
// placeholders expanded (out->input_ids hold every image token; out->multimodal the images and
// 3-D positions). `origin`: who sent the request and whether they are still there (image
// preparation's share of decode slots, its early stop). On a refusal *out is unspecified.
std::optional<Refusal> ValidateRequest(const GenerateRequest& request, const FrontendLimits& limits,
                                       const ValidationModel& model, Dialect dialect, InferenceRequest* out,
                                       const RequestOrigin& origin = RequestOrigin());

// Checks a client-supplied request id (empty is fine: the server generates one).
std::optional<Refusal> CheckRequestId(const std::string& request_id, const FrontendLimits& limits, Dialect dialect);

}  // namespace glmserve
