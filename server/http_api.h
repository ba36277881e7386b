// The OpenAI-compatible JSON API of the HTTP front end (server/http_server.h): strict parsing of
// /v1/chat/completions and /v1/completions bodies into a glmserve.v1.InferRequest (so the limits
// are exactly gRPC's: ValidateInferRequest), and errors in OpenAI's shape
// {"error": {"message", "type", "param", "code"}}. No transport code: unit-testable alone.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "glmserve/v1/inference.pb.h"

namespace glmserve {

// One refusal: HTTP status, OpenAI error type, the JSON path of the bad field ("" = none).
struct HttpError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // JSON path: "messages[2].content", "max_tokens"; "" -> null
  std::string code;   // "" -> null
  int retry_after_s = 0;  // > 0: Retry-After header (429, 503)
};
std::string HttpErrorBody(const HttpError& error);  // the JSON object, one line

enum class ApiKind { kChat, kCompletion };

struct ApiRequest {
  ApiKind kind = ApiKind::kChat;
  std::string model;
  // prompt / messages / input_ids, max_new_tokens, min_new_tokens (min_tokens), sampling
  // (penalties included), stop
  v1::InferRequest proto;
  // vLLM's ignore_eos: the caller sets min_new_tokens to the resolved max_new_tokens after
  // validation (max_tokens may be absent: the server's default).
  bool ignore_eos = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

// Limits of the JSON layer (the generation limits are FrontendLimits, applied afterwards).
inline constexpr int kMaxJsonDepth = 64;

// Parses and type-checks a request body. On failure the error names the JSON path; invalid JSON
// says where (byte offset) and why.
std::optional<HttpError> ParseApiRequest(ApiKind kind, const std::string& body, ApiRequest* out);

// ValidateInferRequest's INVALID_ARGUMENT ("field: why") as an OpenAI error: the proto field is
// renamed to the JSON one (max_new_tokens -> max_tokens, input_ids[i] -> prompt[i], ...).
HttpError FromValidationStatus(const absl::Status& status, ApiKind kind);
// A refusal or failure from the engine: RESOURCE_EXHAUSTED -> 429 (Retry-After from its "retry
// after N ms" hint), UNAVAILABLE -> 503, DEADLINE_EXCEEDED -> 504, INVALID_ARGUMENT -> 400,
// CANCELLED -> 499 (client closed), anything else -> 500.
HttpError FromEngineStatus(const absl::Status& status, ApiKind kind);

// A `timeout` value: seconds as a decimal number, optionally suffixed "s" or "ms" ("2.5", "300ms").
// In (0, 86400] s.
std::optional<HttpError> ParseTimeout(const std::string& text, const std::string& param,
                                      std::chrono::milliseconds* out);

}  // namespace glmserve
