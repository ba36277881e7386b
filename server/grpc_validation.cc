#include "server/grpc_validation.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/tokenizer.h"

namespace glmserve {
namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

}  // namespace

absl::Status ValidateRequestId(const std::string& request_id, const FrontendLimits& limits) {
  if (static_cast<int64_t>(request_id.size()) > limits.max_request_id_bytes) {
    return Invalid(absl::StrCat("request_id: ", request_id.size(), " bytes; at most ",
                                limits.max_request_id_bytes, " bytes allowed"));
  }
  for (unsigned char c : request_id) {
    if (c < 0x21 || c > 0x7e) {
      return Invalid("request_id: only printable ASCII without spaces (0x21..0x7e) allowed");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<InferenceRequest> ValidateInferRequest(const v1::InferRequest& request,
                                                      const FrontendLimits& limits,
                                                      const ValidationModel& model) {
  const int32_t vocab = model.vocab_size;
  // Prompt ids: input_ids, else the chat messages, else the prompt text.
  std::vector<int32_t> input_ids(request.input_ids().begin(), request.input_ids().end());
  const char* ids_field = "input_ids";
  if (input_ids.empty() && (request.messages_size() > 0 || !request.prompt().empty())) {
    const char* field = request.messages_size() > 0 ? "messages" : "prompt";
    if (request.messages_size() > 0 && !request.prompt().empty()) {
      return Invalid("prompt: set either prompt or messages, not both");
    }
    if (model.tokenizer == nullptr) {
      return Invalid(absl::StrCat(field, ": the server has no tokenizer (no tokenizer.json or "
                                  "tokenizer.model in the model directory); send input_ids"));
    }
    if (request.messages_size() > 0) {
      std::vector<tokenizer::Message> messages;
      for (const v1::Message& m : request.messages()) messages.push_back({m.role(), m.content()});
      absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->ApplyChatTemplate(messages);
      if (!ids.ok()) return Invalid(std::string(ids.status().message()));
      input_ids = std::move(*ids);
    } else {
      input_ids = model.tokenizer->Encode(request.prompt());
    }
    ids_field = field;
    if (input_ids.empty()) return Invalid(absl::StrCat(field, ": tokenizes to no ids"));
  }
  if (input_ids.empty()) {
    return Invalid("input_ids: must not be empty (at least 1 token id in [0, " +
                   std::to_string(vocab) + "))");
  }
  for (size_t i = 0; i < input_ids.size(); ++i) {
    const int32_t id = input_ids[i];
    if (id < 0 || id >= vocab) {
      return Invalid(absl::StrCat(ids_field, "[", i, "]: ", id, " is outside the vocabulary [0, ",
                                  vocab, ")"));
    }
  }
  if (request.stop_size() > 0 && model.tokenizer == nullptr) {
    return Invalid("stop: stop strings need the tokenizer, which this server does not have; use "
                   "stop_token_ids");
  }
  if (request.stop_size() > kMaxStopStrings) {
    return Invalid(absl::StrCat("stop: ", request.stop_size(), " strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const size_t n = request.stop(i).size();
    if (n == 0 || n > static_cast<size_t>(kMaxStopStringBytes)) {
      return Invalid(absl::StrCat("stop[", i, "]: ", n, " bytes; each stop string must have 1..",
                                  kMaxStopStringBytes, " bytes"));
    }
  }
  const int32_t prompt_tokens = static_cast<int32_t>(input_ids.size());
  int32_t max_prompt = limits.max_prompt_tokens;
  if (model.max_context > 0 && (max_prompt <= 0 || max_prompt > model.max_context - 1)) {
    max_prompt = model.max_context - 1;  // leave room for at least one new token
  }
  if (max_prompt > 0 && prompt_tokens > max_prompt) {
    return Invalid(absl::StrCat(ids_field, ": ", prompt_tokens, " tokens; at most ", max_prompt,
                                " prompt tokens allowed"));
  }

  int32_t max_new = request.max_new_tokens();
  if (max_new < 0 || max_new > limits.max_new_tokens_cap) {
    return Invalid(absl::StrCat("max_new_tokens: ", max_new, " is outside [0, ",
                                limits.max_new_tokens_cap, "] (0 means the default, ",
                                limits.default_max_new_tokens, ")"));
  }
  if (max_new == 0) max_new = limits.default_max_new_tokens;
  if (model.max_context > 0 && int64_t{prompt_tokens} + max_new > model.max_context) {
    const int32_t room = model.max_context - prompt_tokens;
    if (request.max_new_tokens() == 0) {
      max_new = room;  // the default shrinks to fit; an explicit value is the client's choice
    } else {
      return Invalid(absl::StrCat("max_new_tokens: ", max_new, " with ", prompt_tokens,
                                  " prompt tokens exceeds the model's max context ",
                                  model.max_context, "; allowed range [1, ", room, "]"));
    }
  }

  const int32_t min_new = request.min_new_tokens();
  if (min_new < 0 || min_new > max_new) {
    return Invalid(absl::StrCat("min_new_tokens: ", min_new, " is outside [0, max_new_tokens=",
                                max_new, "]"));
  }

  const float temperature = request.temperature();
  if (!std::isfinite(temperature) || temperature < 0.0f || temperature > limits.max_temperature) {
    return Invalid(absl::StrCat("temperature: ", temperature, " is outside [0, ",
                                limits.max_temperature, "] (0 = greedy)"));
  }
  float top_p = request.top_p();
  if (!std::isfinite(top_p) || top_p < 0.0f || top_p > 1.0f) {
    return Invalid(absl::StrCat("top_p: ", top_p, " is outside (0, 1] (0 means 1)"));
  }
  if (top_p == 0.0f) top_p = 1.0f;
  if (request.top_k() < 0) {
    return Invalid(absl::StrCat("top_k: ", request.top_k(), " is outside [0, inf) (0 = no limit)"));
  }
  const float frequency_penalty = request.frequency_penalty();
  if (!std::isfinite(frequency_penalty) || frequency_penalty < kMinOpenAiPenalty ||
      frequency_penalty > kMaxOpenAiPenalty) {
    return Invalid(absl::StrCat("frequency_penalty: ", frequency_penalty, " is outside [",
                                kMinOpenAiPenalty, ", ", kMaxOpenAiPenalty, "] (0 = off)"));
  }
  const float presence_penalty = request.presence_penalty();
  if (!std::isfinite(presence_penalty) || presence_penalty < kMinOpenAiPenalty ||
      presence_penalty > kMaxOpenAiPenalty) {
    return Invalid(absl::StrCat("presence_penalty: ", presence_penalty, " is outside [",
                                kMinOpenAiPenalty, ", ", kMaxOpenAiPenalty, "] (0 = off)"));
  }
  float repetition_penalty = request.repetition_penalty();
  if (!std::isfinite(repetition_penalty) || repetition_penalty < 0.0f ||
      repetition_penalty > kMaxRepetitionPenalty) {
    return Invalid(absl::StrCat("repetition_penalty: ", repetition_penalty, " is outside (0, ",
                                kMaxRepetitionPenalty, "] (0 means 1 = off)"));
  }
  if (repetition_penalty == 0.0f) repetition_penalty = 1.0f;
  for (int i = 0; i < request.stop_token_ids_size(); ++i) {
    const int32_t id = request.stop_token_ids(i);
    if (id < 0 || id >= vocab) {
      return Invalid(absl::StrCat("stop_token_ids[", i, "]: ", id,
                                  " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  absl::Status id_status = ValidateRequestId(request.request_id(), limits);
  if (!id_status.ok()) return id_status;

  InferenceRequest out;
  out.input_ids = std::move(input_ids);
  out.params.max_new_tokens = max_new;
  out.params.min_new_tokens = min_new;
  out.params.sampling.temperature = temperature;
  out.params.sampling.top_p = top_p;
  out.params.sampling.top_k = request.top_k();
  out.params.sampling.seed = request.seed();
  out.params.sampling.frequency_penalty = frequency_penalty;
  out.params.sampling.presence_penalty = presence_penalty;
  out.params.sampling.repetition_penalty = repetition_penalty;
  out.params.stop_token_ids.assign(request.stop_token_ids().begin(),
                                   request.stop_token_ids().end());
  if (out.params.stop_token_ids.empty() && model.tokenizer != nullptr) {
    // Default stop ids: the model's eos ids plus the tokenizer's end-of-turn ids (<|user|>,
    // <|observation|>) where the config lacks them (ChatGLM3's config has only </s>).
    std::vector<int32_t> stop = model.eos_token_ids;
    for (int32_t id : model.tokenizer->DefaultStopIds()) {
      if (id < vocab && std::find(stop.begin(), stop.end(), id) == stop.end()) stop.push_back(id);
    }
    if (stop.size() > model.eos_token_ids.size()) out.params.stop_token_ids = std::move(stop);
  }
  return out;
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kUnspecified: return v1::UNSPECIFIED;
    case FinishReason::kLength: return v1::LENGTH;
    case FinishReason::kStop: return v1::STOP;
    case FinishReason::kCancelled: return v1::CANCELLED;
    case FinishReason::kDeadline: return v1::DEADLINE;
    case FinishReason::kError: return v1::ERROR;
  }
  return v1::UNSPECIFIED;
}

}  // namespace glmserve
