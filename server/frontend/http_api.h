// The OpenAI-compatible JSON API of the HTTP front end (server/frontend/http_server.h): strict parsing of
// /v1/chat/completions and /v1/completions bodies into the GenerateRequest gRPC's parser builds too
// (so the limits are exactly gRPC's: ValidateRequest), and errors in OpenAI's shape
// {"error": {"message", "type", "param", "code"}}. No transport code: unit-testable alone.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "server/request/request.h"

namespace glmserve {

// A refusal in OpenAI's shape: HTTP status, error type and code, the JSON path of the bad field
// ("" = none). Rendered from a Refusal (server/request/request.h), never built from message text.
struct HttpError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;      // JSON path: "messages[2].content", "max_tokens"; "" -> null
  std::string code;       // "" -> null
  int retry_after_s = 0;  // > 0: Retry-After header (429, 503)
};
std::string HttpErrorBody(const HttpError& error);  // the JSON object, one line

// The OpenAI rendering of a refusal: status and codes from its kind, `param` its field (the
// deadline's is `timeout`), Retry-After from its retry_after_ms (at least 1 s on 429/503).
HttpError ToHttpError(const Refusal& refusal);

enum class ApiKind { kChat, kCompletion };

struct ApiRequest {
  ApiKind kind = ApiKind::kChat;
  std::string model;
  // prompt / messages / input_ids, max_tokens, min_tokens, sampling (penalties included), stop,
  // ignore_eos: what gRPC's parser fills from the proto.
  GenerateRequest request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // stream_options.continuous_usage_stats (vLLM's): with include_usage, every chunk carries the
  // usage so far, not null.
  bool continuous_usage = false;
  // return_token_ids (vLLM's spelling): each streamed chunk also carries the engine step's ids in
  // the choice's `token_ids`, and a step whose ids decode to no text still sends a chunk, so a
  // client sees every step (load tools timing tokens of random-weight models).
  bool return_token_ids = false;
};

// Limits of the JSON layer (the generation limits are FrontendLimits, applied afterwards).
inline constexpr int kMaxJsonDepth = 64;

// Parses and type-checks a request body. On failure the error names the JSON path; invalid JSON
// says where (byte offset) and why. Fields it does not know are refused (unsupported_parameter),
// as are those it knows but does not implement at a value that would change the output
// (logit_bias, tool_choice "required", ...). `max_tokens_cap`: the server's --max-new-tokens-cap,
// the upper bound max_tokens is refused above (FrontendLimits::max_new_tokens_cap). `defaults`:
// the sampling of fields left out.
std::optional<Refusal> ParseApiRequest(ApiKind kind, const std::string& body, ApiRequest* out,
                                       int32_t max_tokens_cap = std::numeric_limits<int32_t>::max(),
                                       const SamplingDefaults& defaults = {});

// The dialect validation names fields in (max_tokens, prompt[3], messages).
inline Dialect DialectOf(ApiKind kind) {
  return kind == ApiKind::kChat ? Dialect::kOpenAiChat : Dialect::kOpenAiCompletion;
}

// A `timeout` value: seconds as a decimal number, optionally suffixed "s" or "ms" ("2.5", "300ms").
// In (0, 86400] s.
std::optional<Refusal> ParseTimeout(const std::string& text, const std::string& param, std::chrono::milliseconds* out);

}  // namespace glmserve
