#include "server/request/request.h"

#include "absl/strings/str_cat.h"
#include "runtime/engine.h"
#include "runtime/shown_value.h"

namespace glmserve {

std::string FieldName(Field field, Dialect dialect, int64_t index) {
  const bool json = dialect != Dialect::kProto;
  const char* name = "";
  switch (field) {
    case Field::kInputIds:
      name = json ? "prompt" : "input_ids";
      break;
    // A chat request has no prompt field: its prompt is the messages.
    case Field::kPrompt:
      name = dialect == Dialect::kOpenAiChat ? "messages" : "prompt";
      break;
    case Field::kMessages:
      name = "messages";
      break;
    case Field::kMaxNewTokens:
      name = json ? "max_tokens" : "max_new_tokens";
      break;
    case Field::kMinNewTokens:
      name = json ? "min_tokens" : "min_new_tokens";
      break;
    case Field::kTemperature:
      name = "temperature";
      break;
    case Field::kTopP:
      name = "top_p";
      break;
    case Field::kTopK:
      name = "top_k";
      break;
    case Field::kFrequencyPenalty:
      name = "frequency_penalty";
      break;
    case Field::kPresencePenalty:
      name = "presence_penalty";
      break;
    case Field::kRepetitionPenalty:
      name = "repetition_penalty";
      break;
    case Field::kStop:
      name = "stop";
      break;
    case Field::kStopTokenIds:
      name = "stop_token_ids";
      break;
    // HTTP takes the request id from a header.
    case Field::kRequestId:
      name = json ? "x-request-id" : "request_id";
      break;
    // vLLM's spelling in JSON (the processor's keyword arguments).
    case Field::kMaxPixels:
      name = json ? "mm_processor_kwargs.max_pixels" : "max_pixels";
      break;
  }
  return index >= 0 ? absl::StrCat(name, "[", index, "]") : std::string(name);
}

Refusal MakeRefusal(absl::StatusCode code, RefusalKind kind, std::string message, int64_t retry_after_ms) {
  Refusal r;
  r.code = code;
  r.kind = kind;
  r.message = std::move(message);
  r.retry_after_ms = retry_after_ms;
  return r;
}

Refusal InvalidField(std::string field, const std::string& detail, RefusalKind kind) {
  // A field path can hold a client's key (an unknown JSON field of 2 MB was echoed whole into the
  // response's param and message and the log line); the server's own paths are far shorter.
  constexpr size_t kShownFieldBytes = 160;
  field = ShownValue(field, kShownFieldBytes);
  Refusal r;
  r.kind = kind;
  r.message = field.empty() ? detail : absl::StrCat(field, ": ", detail);
  r.field = std::move(field);
  return r;
}

Refusal RefusalFromStatus(const absl::Status& status) {
  Refusal r;
  r.code = status.code();
  r.message = std::string(status.message());
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
      r.kind = RefusalKind::kQueueFull;
      r.retry_after_ms = RetryAfterMs(status);
      break;
    case absl::StatusCode::kUnavailable:
      r.kind = RefusalKind::kUnavailable;
      r.retry_after_ms = RetryAfterMs(status);  // an engine restarting after a fault says when
      break;
    case absl::StatusCode::kDeadlineExceeded:
      r.kind = RefusalKind::kDeadline;
      break;
    case absl::StatusCode::kCancelled:
      r.kind = RefusalKind::kCancelled;
      break;
    case absl::StatusCode::kInvalidArgument:
      // The engine's own check: the prompt plus max_new_tokens above its KV capacity.
      r.kind = RefusalKind::kInvalidValue;
      break;
    case absl::StatusCode::kFailedPrecondition:
      // The engine ran the request alone and it still ran out of device memory: not to be retried
      // as it is (RESOURCE_EXHAUSTED would be, by gRPC retry policies and OpenAI's SDKs alike).
      r.kind = RefusalKind::kTooLargeForMemory;
      break;
    default:
      r.kind = RefusalKind::kInternal;
      break;
  }
  return r;
}

}  // namespace glmserve
