#include "server/request/request_validation.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/tokenizer.h"

namespace glmserve {

int32_t MaxPromptTokens(const FrontendLimits& limits, const ValidationModel& model) {
  int32_t max_prompt = limits.max_prompt_tokens;
  if (model.max_context > 0 && (max_prompt <= 0 || max_prompt > model.max_context - 1)) {
    max_prompt = model.max_context - 1;  // leave room for at least one new token
  }
  return std::max(0, max_prompt);
}

std::optional<Refusal> CheckRequestId(const std::string& request_id, const FrontendLimits& limits, Dialect dialect) {
  const std::string field = FieldName(Field::kRequestId, dialect);
  if (static_cast<int64_t>(request_id.size()) > limits.max_request_id_bytes) {
    return InvalidField(
        field, absl::StrCat(request_id.size(), " bytes; at most ", limits.max_request_id_bytes, " bytes allowed"));
  }
  for (unsigned char c : request_id) {
    if (c < 0x21 || c > 0x7e) return InvalidField(field, "only printable ASCII without spaces (0x21..0x7e) allowed");
  }
  return std::nullopt;
}

int64_t PromptTextBytes(const GenerateRequest& request) {
  int64_t bytes = static_cast<int64_t>(request.prompt.size());
  for (const ChatMessage& m : request.messages) bytes += static_cast<int64_t>(m.content.size());
  return bytes;
}

namespace {

// The seed of a request that sets none: unseeded requests each sample their own way, as OpenAI's
// and vLLM's do (a fixed default made every unseeded retry return the same text).
uint64_t DrawnSeed() {
  thread_local std::mt19937_64 generator{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                         std::random_device{}()};
  return generator();
}

// Prompt text longer than this many bytes per allowed prompt token is refused before it is
// tokenized: a token covers at least one byte, and no tokenizer here averages more than 64 bytes a
// token over real text, so such a prompt cannot fit; tokenizing megabytes only to refuse them
// costs CPU on the front end's threads (gRPC's callback threads serve every other call too).
constexpr int64_t kMaxPromptBytesPerToken = 64;

std::optional<Refusal> PromptTextTooLong(const GenerateRequest& request, const FrontendLimits& limits,
                                         const ValidationModel& model, const std::string& prompt_field,
                                         const std::string& messages_field) {
  const int64_t max_prompt = MaxPromptTokens(limits, model);
  if (max_prompt <= 0) return std::nullopt;
  const int64_t max_bytes = max_prompt * kMaxPromptBytesPerToken;
  const int64_t bytes = PromptTextBytes(request);
  if (bytes <= max_bytes) return std::nullopt;
  // The largest part is named where it holds most of the text; else the messages together (a
  // refusal of 200,000 one-byte messages named messages[0].content with the total's byte count).
  std::string field = prompt_field;
  size_t longest = 0;
  for (size_t i = 0; i < request.messages.size(); ++i) {
    const size_t n = request.messages[i].content.size();
    if (n > longest) {
      longest = n;
      field = absl::StrCat(messages_field, "[", i, "].content");
    }
  }
  std::string whose;
  if (request.messages.size() > 1 && static_cast<int64_t>(longest) * 2 < bytes) {
    field = messages_field;
    whose = absl::StrCat(" (in ", request.messages.size(), " messages)");
  }
  return InvalidField(field,
                      absl::StrCat(bytes, " bytes of prompt text", whose, " cannot fit in ", max_prompt,
                                   " prompt tokens (refused before tokenizing: more than ", kMaxPromptBytesPerToken,
                                   " bytes per token)"),
                      RefusalKind::kContextLength);
}

}  // namespace

std::optional<Refusal> ValidateRequest(const GenerateRequest& request, const FrontendLimits& limits,
                                       const ValidationModel& model, Dialect dialect, InferenceRequest* out,
                                       const RequestOrigin& origin) {
  auto name = [dialect](Field field, int64_t index = -1) { return FieldName(field, dialect, index); };
  const int32_t vocab = model.vocab_size;
  // Images first: the costly part, but a bad image must be named even where the prompt would be
  // refused for another reason (e.g. a server without a tokenizer).
  std::vector<ImageInput> images;
  if (auto bad_image = PrepareImages(request, limits.media, origin, model.images.get(), dialect, &images,
                                     MaxPromptTokens(limits, model)))
    return bad_image;
  // Prompt ids: input_ids, else the chat messages, else the prompt text.
  std::vector<int32_t> input_ids = request.input_ids;
  Field ids_field = Field::kInputIds;
  if (input_ids.empty() && (!request.messages.empty() || !request.prompt.empty())) {
    ids_field = !request.messages.empty() ? Field::kMessages : Field::kPrompt;
    if (!request.messages.empty() && !request.prompt.empty()) {
      return InvalidField(name(Field::kPrompt), "set either prompt or messages, not both");
    }
    if (model.tokenizer == nullptr) {
      return InvalidField(name(ids_field), absl::StrCat("the server has no tokenizer (no tokenizer.json or "
                                                        "tokenizer.model in the model directory); send ",
                                                        name(Field::kInputIds)));
    }
    if (auto too_long = PromptTextTooLong(request, limits, model, name(ids_field), name(Field::kMessages))) {
      return too_long;
    }
    if (!request.messages.empty()) {
      std::vector<tokenizer::Message> messages;
      messages.reserve(request.messages.size());
      for (const ChatMessage& m : request.messages) {
        tokenizer::Message message{m.role, m.content, {}};
        // A vision model's template renders content parts as sent (text and image placeholders
        // in order, as transformers does); a text model's gets the joined text.
        if (model.images != nullptr) {
          for (const ChatPart& part : m.parts) {
            tokenizer::MessagePart p;
            p.kind = part.is_image ? tokenizer::MessagePart::Kind::kImage : tokenizer::MessagePart::Kind::kText;
            p.text = part.text;
            message.parts.push_back(std::move(p));
          }
        }
        messages.push_back(std::move(message));
      }
      absl::StatusOr<std::vector<int32_t>> ids = model.tokenizer->ApplyChatTemplate(messages);
      if (!ids.ok()) {
        Refusal r = InvalidField(name(Field::kMessages), "");
        r.message = std::string(ids.status().message());  // names the message and its field itself
        // "messages[1].content[0]: text contains ..." names the part: the refusal's field (an
        // HTTP error's param) says the same, not only "messages".
        const std::string_view message = r.message;
        if (const size_t colon = message.find(": "); colon != std::string_view::npos &&
                                                     message.rfind(r.field + "[", 0) == 0 &&
                                                     message.substr(0, colon).find(' ') == std::string_view::npos) {
          r.field = std::string(message.substr(0, colon));
        }
        return r;
      }
      input_ids = std::move(*ids);
    } else {
      input_ids = model.tokenizer->Encode(request.prompt);
    }
    if (input_ids.empty()) return InvalidField(name(ids_field), "tokenizes to no ids");
  }
  if (input_ids.empty()) {
    // gRPC's prompt has three forms; an empty request names the first and says the others exist.
    return InvalidField(
        name(Field::kInputIds),
        absl::StrCat("must not be empty (at least 1 token id in [0, ", vocab, "))",
                     dialect == Dialect::kProto ? "; or give the prompt as text (prompt) or messages" : ""));
  }
  for (size_t i = 0; i < input_ids.size(); ++i) {
    const int32_t id = input_ids[i];
    if (id < 0 || id >= vocab) {
      return InvalidField(name(ids_field, static_cast<int64_t>(i)),
                          absl::StrCat(id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  // A vision model's prompt: each placeholder expanded to its image's tokens (placeholders without
  // images, e.g. spelled in the text, are refused). The length checks below see the expanded ids.
  std::shared_ptr<const MultimodalPrompt> multimodal;
  if (model.images != nullptr) {
    if (auto bad = ExpandImagePrompt(*model.images, std::move(images), name(ids_field), &input_ids, &multimodal)) {
      return bad;
    }
  }
  const int stops = static_cast<int>(request.stop.size());
  if (stops > 0 && model.tokenizer == nullptr) {
    return InvalidField(name(Field::kStop),
                        "stop strings need the tokenizer, which this server does not have; use stop_token_ids");
  }
  if (stops > kMaxStopStrings) {
    return InvalidField(name(Field::kStop), absl::StrCat(stops, " strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < stops; ++i) {
    const size_t n = request.stop[i].size();
    if (n == 0 || n > static_cast<size_t>(kMaxStopStringBytes)) {
      return InvalidField(name(Field::kStop, i),
                          absl::StrCat(n, " bytes; each stop string must have 1..", kMaxStopStringBytes, " bytes"));
    }
  }
  const int32_t prompt_tokens = static_cast<int32_t>(input_ids.size());
  const int32_t max_prompt = MaxPromptTokens(limits, model);
  if (max_prompt > 0 && prompt_tokens > max_prompt) {
    Refusal r = InvalidField(name(ids_field),
                             absl::StrCat(prompt_tokens, " tokens; at most ", max_prompt, " prompt tokens allowed"),
                             RefusalKind::kContextLength);
    r.prompt_tokens = prompt_tokens;
    r.allowed_prompt_tokens = max_prompt;
    return r;
  }

  int32_t max_new = request.max_new_tokens;
  if (max_new < 0 || max_new > limits.max_new_tokens_cap) {
    return InvalidField(name(Field::kMaxNewTokens),
                        absl::StrCat(max_new, " is outside [1, ", limits.max_new_tokens_cap,
                                     "] (unset means the default, ", limits.default_max_new_tokens, ")"));
  }
  if (max_new == 0) max_new = limits.default_max_new_tokens;
  if (model.max_context > 0 && int64_t{prompt_tokens} + max_new > model.max_context) {
    const int32_t room = model.max_context - prompt_tokens;
    if (request.max_new_tokens == 0) {
      max_new = room;  // the default shrinks to fit; an explicit value is the client's choice
    } else {
      return InvalidField(
          name(Field::kMaxNewTokens),
          absl::StrCat(
              max_new, " with ", prompt_tokens, " prompt tokens exceeds the model's max context ", model.max_context,
              model.context_is_kv_capacity ? " (what the KV cache holds: --kv-blocks / --kv-cpu-budget-mb)" : "",
              "; allowed range [1, ", room, "]"),
          RefusalKind::kContextLength);
    }
  }

  const int32_t min_new = request.min_new_tokens;
  if (min_new < 0 || min_new > max_new) {
    return InvalidField(name(Field::kMinNewTokens),
                        absl::StrCat(min_new, " is outside [0, ", name(Field::kMaxNewTokens), "=", max_new, "]"));
  }

  const float temperature = request.temperature;
  if (!std::isfinite(temperature) || temperature < 0.0f || temperature > limits.max_temperature) {
    return InvalidField(name(Field::kTemperature),
                        absl::StrCat(temperature, " is outside [0, ", limits.max_temperature, "] (0 = greedy)"));
  }
  float top_p = request.top_p;
  if (!std::isfinite(top_p) || top_p < 0.0f || top_p > 1.0f) {
    return InvalidField(name(Field::kTopP), absl::StrCat(top_p, " is outside (0, 1] (unset means 1)"));
  }
  if (top_p == 0.0f) top_p = 1.0f;
  if (request.top_k < 0) {
    return InvalidField(name(Field::kTopK), absl::StrCat(request.top_k, " is outside [0, inf) (0 = no limit)"));
  }
  for (const auto& [field, value] : {std::pair{Field::kFrequencyPenalty, request.frequency_penalty},
                                     std::pair{Field::kPresencePenalty, request.presence_penalty}}) {
    if (!std::isfinite(value) || value < kMinOpenAiPenalty || value > kMaxOpenAiPenalty) {
      return InvalidField(
          name(field), absl::StrCat(value, " is outside [", kMinOpenAiPenalty, ", ", kMaxOpenAiPenalty, "] (0 = off)"));
    }
  }
  float repetition_penalty = request.repetition_penalty;
  if (!std::isfinite(repetition_penalty) || repetition_penalty < 0.0f || repetition_penalty > kMaxRepetitionPenalty) {
    return InvalidField(name(Field::kRepetitionPenalty), absl::StrCat(repetition_penalty, " is outside (0, ",
                                                                      kMaxRepetitionPenalty, "] (0 means 1 = off)"));
  }
  if (repetition_penalty == 0.0f) repetition_penalty = 1.0f;
  for (size_t i = 0; i < request.stop_token_ids.size(); ++i) {
    const int32_t id = request.stop_token_ids[i];
    if (id < 0 || id >= vocab) {
      return InvalidField(name(Field::kStopTokenIds, static_cast<int64_t>(i)),
                          absl::StrCat(id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (auto bad_id = CheckRequestId(request.request_id, limits, dialect)) return bad_id;

  out->input_ids = std::move(input_ids);
  out->params.max_new_tokens = max_new;
  out->params.min_new_tokens = min_new;
  out->params.ignore_eos = request.ignore_eos;
  out->params.sampling.temperature = temperature;
  out->params.sampling.top_p = top_p;
  out->params.sampling.top_k = request.top_k;
  out->params.sampling.seed = request.seed ? *request.seed : DrawnSeed();
  out->params.sampling.frequency_penalty = request.frequency_penalty;
  out->params.sampling.presence_penalty = request.presence_penalty;
  out->params.sampling.repetition_penalty = repetition_penalty;
  // Default stop ids: the model's eos ids plus the tokenizer's end-of-turn ids (<|user|>,
  // <|observation|>) where the config lacks them (ChatGLM3's config has only </s>).
  std::vector<int32_t> stop = model.eos_token_ids;
  auto add = [&stop, vocab](int32_t id) {
    if (id < vocab && std::find(stop.begin(), stop.end(), id) == stop.end()) stop.push_back(id);
  };
  if (model.tokenizer != nullptr) {
    for (int32_t id : model.tokenizer->DefaultStopIds()) add(id);
  }
  if (request.ignore_eos) {
    out->params.stop_token_ids = request.stop_token_ids;  // the request's own, or none
  } else if (request.stop_token_ids.empty()) {
    // Empty: the engine's own eos ids, unless the tokenizer adds to them.
    if (stop.size() > model.eos_token_ids.size()) out->params.stop_token_ids = std::move(stop);
  } else if (request.stop_token_ids_add_to_defaults) {
    for (int32_t id : request.stop_token_ids) add(id);
    out->params.stop_token_ids = std::move(stop);
  } else {
    out->params.stop_token_ids = request.stop_token_ids;
  }
  out->deadline = request.deadline;
  out->multimodal = std::move(multimodal);
  return std::nullopt;
}

}  // namespace glmserve
