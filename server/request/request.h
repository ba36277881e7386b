// The one internal request and the one refusal of both front ends. The proto parser
// (grpc_validation.cc) and the JSON parser (http_api.cc) each build a GenerateRequest; validation
// (ValidateRequest) and the request session (request_session.h) see only this type. Every refusal
// is a Refusal: a status code, a kind, the field as the client spelled it, and the numbers a
// front end needs (retry-after, prompt length); each front end renders it in its own shape (gRPC
// status + message; OpenAI JSON error + Retry-After). Messages are for people: nothing reads them
// back. No proto, no HTTP, no LibTorch types here.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace glmserve {

// One image as the client sent it, not yet decoded. Exactly one of `url` (the OpenAI API's
// image_url: a data: URL, a file:// URL under --allowed-local-media-path, or an http(s) URL, which
// is refused) and `bytes` (gRPC's Image.data) is set. Resolved, decoded and preprocessed by
// ValidateRequest (server/request/media.h) on the front end's thread.
struct ImageData {
  std::string url;
  std::string bytes;
  std::string mime_type;  // gRPC's Image.mime_type ("" = from the bytes' signature)
  // Where it came from, as the client spelled it, for refusals: the bytes' field
  // ("messages[1].content[0].image_url.url", "messages[1].parts[0].image.data", "images[0].data"),
  // the mime type's field ("" for a URL: its media type is part of `field`), and the content part
  // ("messages[1].content[0]"; "" for input_ids images).
  std::string field;
  std::string mime_field;
  std::string part_field;
};

// One part of a chat message's content, in order: text, or the place of GenerateRequest::images[image].
struct ChatPart {
  bool is_image = false;
  std::string text;    // text parts
  int32_t image = -1;  // image parts: index into GenerateRequest::images
};

struct ChatMessage {
  std::string role;
  // The text: a string content as sent, or the text parts joined with "\n" (text models render it).
  std::string content;
  // Set when the content came as parts (an OpenAI content array, gRPC Message.parts): text and
  // images in order, as a vision model's chat template renders them. Empty for a string content.
  std::vector<ChatPart> parts;
};

// What a client asks for, as parsed from its wire format and not yet checked against limits or
// the model. Zero means "unset" where the proto says so (max_new_tokens, top_p, repetition_penalty);
// ValidateRequest resolves the defaults. A new input kind (images) is one more field here.
struct GenerateRequest {
  // The prompt: input_ids, else messages (chat template), else prompt text.
  std::vector<int32_t> input_ids;
  std::string prompt;
  std::vector<ChatMessage> messages;
  // The prompt's images in prompt order: the messages' image parts, or, with input_ids, one per
  // image placeholder (image_start, image_token, image_end) in the ids.
  std::vector<ImageData> images;
  // The request's own image size limit (OpenAI API: mm_processor_kwargs.max_pixels; gRPC:
  // max_pixels): replaces the server's for this request, at most the server's. 0 = the server's.
  int64_t max_pixels = 0;

  int32_t max_new_tokens = 0;  // 0 = the server's default (shrunk to fit the context)
  int32_t min_new_tokens = 0;
  // vLLM's ignore_eos: the model's end ids (eos, and the tokenizer's end-of-turn ids) neither end
  // the output nor are masked; stop_token_ids and stop strings still end it.
  bool ignore_eos = false;
  float temperature = 0.0f;  // 0 = greedy
  float top_p = 0.0f;        // 0 = 1
  int32_t top_k = 0;         // 0 = no limit
  // Unset: a seed drawn for the request (as OpenAI and vLLM do: unseeded samples differ each time).
  std::optional<uint64_t> seed;
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  float repetition_penalty = 0.0f;  // 0 = unset = 1
  std::vector<std::string> stop;    // stop strings (need the tokenizer)
  std::vector<int32_t> stop_token_ids;
  // stop_token_ids end the output besides the model's default stop ids (the OpenAI API's vLLM
  // field), instead of replacing them (the proto's).
  bool stop_token_ids_add_to_defaults = false;

  std::string request_id;  // as the client sent it ("" = none); checked by ValidateRequestId
  // Absolute; max() = none. Set by the front end (gRPC deadline, HTTP timeout, or the default).
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
};

// What a request that leaves temperature, top_p or top_k out gets: OpenAI's defaults (temperature
// 1, top_p 1), replaced by the model's generation_config.json values where it sets them (as vLLM's
// OpenAI server does). serve fills it from the checkpoint.
struct SamplingDefaults {
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 0.0f;        // 0 = 1
  int32_t top_k = 0;         // 0 = no limit
};

// How a front end spells the request's fields in refusals: proto field names, or the OpenAI JSON
// paths (max_tokens, prompt[3], messages).
enum class Dialect { kProto, kOpenAiChat, kOpenAiCompletion };

// The fields validation can name.
enum class Field {
  kInputIds,
  kPrompt,
  kMessages,
  kMaxNewTokens,
  kMinNewTokens,
  kTemperature,
  kTopP,
  kTopK,
  kFrequencyPenalty,
  kPresencePenalty,
  kRepetitionPenalty,
  kStop,
  kStopTokenIds,
  kRequestId,
  kMaxPixels,
};
// The field's name in `dialect`; index >= 0 appends "[index]".
std::string FieldName(Field field, Dialect dialect, int64_t index = -1);

// Why a request was refused (or failed). Each kind has one rendering per front end.
enum class RefusalKind {
  // The request itself (INVALID_ARGUMENT unless said otherwise).
  kInvalidValue,          // a value out of range or not allowed
  kInvalidType,           // JSON: a value of the wrong type
  kMissingParameter,      // JSON: a required field is absent
  kUnsupportedParameter,  // JSON: a field this server does not implement (tools, logprobs, ...)
  kUnsupportedContent,    // an image the model cannot take; JSON: an audio/video/file content part
  kInvalidJson,           // JSON: the body does not parse, is not an object, nests too deep
  kContextLength,         // the prompt (or prompt + max_new_tokens) does not fit
  kTooLargeForMemory,     // ran out of device memory alone, after its retries (FAILED_PRECONDITION)
  kBadRequest,            // HTTP: an unreadable request
  kPayloadTooLarge,       // HTTP: body over --max-message-bytes
  kUnsupportedMediaType,  // HTTP: POST body not application/json
  kNotFound,              // HTTP: no such route
  kModelNotFound,         // HTTP: `model` is none of --served-model-name
  kRequestTimeout,        // HTTP: head and body not in within --http-read-timeout-ms
  kHeaderTooLarge,        // HTTP: a request head over its size or field-count limit
  kLengthRequired,        // HTTP: a POST with neither Content-Length nor Transfer-Encoding (411)
  // Who asks and how much.
  kUnauthenticated,     // no or a wrong API key
  kClientQuota,         // over --max-requests-per-client
  kQueueFull,           // the engine's or the HTTP waiting queue is full
  kDraining,            // the server is draining
  kUnavailable,         // loading, restarting, stopped after a crash loop, shut down
  kTooManyConnections,  // HTTP: at --http-max-connections
  // How a request ended other than OK.
  kDeadline,
  kCancelled,
  kInternal,
};

struct Refusal {
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  RefusalKind kind = RefusalKind::kInvalidValue;
  std::string field;           // the proto field name or the JSON path ("messages[2].content"); "" = none
  std::string message;         // for people, names the field; never parsed
  int64_t retry_after_ms = 0;  // > 0: the client may retry after this long (RESOURCE_EXHAUSTED, UNAVAILABLE)
  // kContextLength from the prompt's length: its tokens and the most allowed (0 otherwise).
  int32_t prompt_tokens = 0;
  int32_t allowed_prompt_tokens = 0;

  absl::Status ToStatus() const { return absl::Status(code, message); }
};

// A refusal without a field (who asks, how much, how it ended).
Refusal MakeRefusal(absl::StatusCode code, RefusalKind kind, std::string message, int64_t retry_after_ms = 0);

// A refusal whose field and message are `field: detail`.
Refusal InvalidField(std::string field, const std::string& detail, RefusalKind kind = RefusalKind::kInvalidValue);

// A status from the engine (Submit or a result): kind from the code alone, retry-after from the
// engine's payload (runtime/engine.h), the message as is.
Refusal RefusalFromStatus(const absl::Status& status);

// The gRPC/abseil code name ("OK", "RESOURCE_EXHAUSTED", ...): the `code` label of
// glmserve_requests_total, the `status` of request logs, glmload's error names. One function for
// every front end so the same refusal is counted the same everywhere. Inline: glmload uses it
// without linking the server.
inline const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return "OK";
    case absl::StatusCode::kCancelled:
      return "CANCELLED";
    case absl::StatusCode::kUnknown:
      return "UNKNOWN";
    case absl::StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kNotFound:
      return "NOT_FOUND";
    case absl::StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case absl::StatusCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case absl::StatusCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case absl::StatusCode::kAborted:
      return "ABORTED";
    case absl::StatusCode::kOutOfRange:
      return "OUT_OF_RANGE";
    case absl::StatusCode::kUnimplemented:
      return "UNIMPLEMENTED";
    case absl::StatusCode::kInternal:
      return "INTERNAL";
    case absl::StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case absl::StatusCode::kDataLoss:
      return "DATA_LOSS";
    case absl::StatusCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

}  // namespace glmserve
