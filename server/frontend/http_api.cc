#include "server/frontend/http_api.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "runtime/json_util.h"
#include "runtime/shown_value.h"
#include "server/request/request_validation.h"

namespace glmserve {
namespace {

using nlohmann::json;

Refusal Bad(std::string param, const std::string& message, RefusalKind kind = RefusalKind::kInvalidValue) {
  return InvalidField(std::move(param), message, kind);
}

const char* TypeName(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a number";
    default:
      return "an integer";
  }
}

Refusal WrongType(const std::string& path, const json& v, const char* expected) {
  return Bad(path, absl::StrCat("expected ", expected, ", got ", TypeName(v)), RefusalKind::kInvalidType);
}

// Nesting depth outside strings, without building anything (a guard before the real parse).
int MaxDepth(const std::string& body) {
  int depth = 0;
  int max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

// Optional typed fields: absent or null -> nullopt-like (returns false without error).
std::optional<Refusal> GetNumber(const json& body, const char* key, double lo, double hi, std::optional<double>* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return WrongType(key, *it, "a number");
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    return Bad(key, absl::StrCat(v, " is outside [", lo, ", ", hi, "]"));
  }
  *out = v;
  return std::nullopt;
}

std::optional<Refusal> GetInt(const json& body, const char* key, int64_t lo, int64_t hi, std::optional<int64_t>* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer()) {
    if (it->is_number_float()) {
      // 3.0, or an integer literal past 64 bits (JSON numbers have no size; the parser keeps those
      // as doubles). hi + 1 as a double: INT64_MAX itself rounds up to 2^63, which is out.
      const double d = it->get<double>();
      if (std::isfinite(d) && d == std::floor(d)) {
        if (d < static_cast<double>(lo) || d >= static_cast<double>(hi) + 1.0) {
          return Bad(key, absl::StrCat(it->dump(), " is outside [", lo, ", ", hi, "]"));
        }
        *out = static_cast<int64_t>(d);
        return std::nullopt;
      }
    }
    return WrongType(key, *it, "an integer");
  }
  if (!JsonIntegerIn(*it, lo, hi)) return Bad(key, absl::StrCat(it->dump(), " is outside [", lo, ", ", hi, "]"));
  *out = it->get<int64_t>();
  return std::nullopt;
}

std::optional<Refusal> GetBool(const json& body, const char* key, bool* out) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return WrongType(key, *it, "a boolean");
  *out = it->get<bool>();
  return std::nullopt;
}

// The fields each route reads, and those it accepts knowing they change no output (user,
// metadata, store, service_tier, safety_identifier, prompt_cache_key: a cache hint, prefix caching
// is automatic). Anything else is refused naming it: a field silently dropped
// would break what the client asked for (logit_bias, a vLLM extra this server lacks).
std::optional<Refusal> UnknownField(ApiKind kind, const json& body) {
  static constexpr std::string_view kEither[] = {"model",
                                                 "max_tokens",
                                                 "temperature",
                                                 "top_p",
                                                 "top_k",
                                                 "seed",
                                                 "n",
                                                 "frequency_penalty",
                                                 "presence_penalty",
                                                 "repetition_penalty",
                                                 "min_tokens",
                                                 "ignore_eos",
                                                 "mm_processor_kwargs",
                                                 "stop",
                                                 "stop_token_ids",
                                                 "stream",
                                                 "stream_options",
                                                 "return_token_ids",
                                                 "logprobs",
                                                 "top_logprobs",
                                                 "tools",
                                                 "tool_choice",
                                                 "functions",
                                                 "function_call",
                                                 "parallel_tool_calls",
                                                 "response_format",
                                                 "logit_bias",
                                                 "skip_special_tokens",
                                                 "spaces_between_special_tokens",
                                                 "include_stop_str_in_output",
                                                 "min_p",
                                                 "echo",
                                                 "user",
                                                 "metadata",
                                                 "store",
                                                 "service_tier",
                                                 "safety_identifier",
                                                 "prompt_cache_key"};
  static constexpr std::string_view kChatOnly[] = {"messages",
                                                   "max_completion_tokens",
                                                   "add_generation_prompt",
                                                   "continue_final_message",
                                                   "chat_template_kwargs",
                                                   "modalities",
                                                   "audio",
                                                   "prediction",
                                                   "web_search_options",
                                                   "reasoning_effort",
                                                   "verbosity"};
  static constexpr std::string_view kCompletionOnly[] = {"prompt", "best_of", "suffix"};
  auto listed = [](const auto& names, const std::string& key) {
    return std::find(std::begin(names), std::end(names), key) != std::end(names);
  };
  for (auto it = body.begin(); it != body.end(); ++it) {
    const std::string& key = it.key();
    if (listed(kEither, key) || (kind == ApiKind::kChat ? listed(kChatOnly, key) : listed(kCompletionOnly, key))) {
      continue;
    }
    return Bad(key,
               absl::StrCat("unknown field for ", kind == ApiKind::kChat ? "/v1/chat/completions" : "/v1/completions"),
               RefusalKind::kUnsupportedParameter);
  }
  return std::nullopt;
}

// Fields accepted only at the value that changes nothing here: logit_bias {}, top_logprobs 0,
// tool_choice / function_call "none" or "auto" (no tools can be given), skip_special_tokens true;
// vLLM's extras at their defaults, as clients that spell out vLLM's defaults send them: min_p 0,
// include_stop_str_in_output false, add_generation_prompt true, continue_final_message false,
// chat_template_kwargs {}; spaces_between_special_tokens at either value (special tokens are
// never in the text).
std::optional<Refusal> NoOpOnly(const json& body) {
  if (auto it = body.find("logit_bias"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("logit_bias", *it, "an object");
    if (!it->empty()) return Bad("logit_bias", "token biases are not supported", RefusalKind::kUnsupportedParameter);
  }
  if (auto it = body.find("top_logprobs"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) return WrongType("top_logprobs", *it, "an integer");
    if (it->get<int64_t>() != 0) return Bad("top_logprobs", "not supported", RefusalKind::kUnsupportedParameter);
  }
  for (const char* key : {"tool_choice", "function_call"}) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) continue;
    if (!it->is_string() && !it->is_object()) return WrongType(key, *it, "a string or an object");
    if (it->is_object() ||
        (it->get_ref<const std::string&>() != "none" && it->get_ref<const std::string&>() != "auto")) {
      return Bad(key, "tool calling is not supported (only \"none\" or \"auto\")", RefusalKind::kUnsupportedParameter);
    }
  }
  if (auto it = body.find("functions"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return WrongType("functions", *it, "an array");
    if (!it->empty()) return Bad("functions", "function calling is not supported", RefusalKind::kUnsupportedParameter);
  }
  bool parallel_tool_calls = false;  // type-checked only: with no tools there is nothing to call
  if (auto e = GetBool(body, "parallel_tool_calls", &parallel_tool_calls)) return e;
  bool skip_special_tokens = true;
  if (auto e = GetBool(body, "skip_special_tokens", &skip_special_tokens)) return e;
  if (!skip_special_tokens) {
    return Bad("skip_special_tokens", "only true is supported (special tokens are never in the text)",
               RefusalKind::kUnsupportedParameter);
  }
  bool spaces_between_special_tokens = true;
  if (auto e = GetBool(body, "spaces_between_special_tokens", &spaces_between_special_tokens)) return e;
  if (auto it = body.find("min_p"); it != body.end() && !it->is_null()) {
    if (!it->is_number()) return WrongType("min_p", *it, "a number");
    if (it->get<double>() != 0.0) {
      return Bad("min_p", "only 0 is supported (no min-p filtering; top_p and top_k are)",
                 RefusalKind::kUnsupportedParameter);
    }
  }
  // Each of these at its default: (field, the default, what the other value would ask for).
  struct BoolDefault {
    const char* key;
    bool value;
    const char* unsupported;
  };
  for (const BoolDefault& d :
       {BoolDefault{"include_stop_str_in_output", false, "stop strings are never in the text"},
        BoolDefault{"add_generation_prompt", true, "the chat template always ends with the assistant's turn"},
        BoolDefault{"continue_final_message", false, "continuing the last message is not supported"},
        BoolDefault{"echo", false, "echoing the prompt is not supported"}}) {
    bool value = d.value;
    if (auto e = GetBool(body, d.key, &value)) return e;
    if (value != d.value) {
      return Bad(d.key, absl::StrCat("only ", d.value ? "true" : "false", " is supported (", d.unsupported, ")"),
                 RefusalKind::kUnsupportedParameter);
    }
  }
  // OpenAI's chat fields for what a text model here does not do, accepted where they ask for
  // nothing: modalities ["text"]; audio, prediction, web_search_options, reasoning_effort and
  // verbosity null (each asks for output or effort this server cannot give).
  if (auto it = body.find("modalities"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return WrongType("modalities", *it, "an array of strings");
    for (const json& m : *it) {
      if (!m.is_string() || m.get_ref<const std::string&>() != "text") {
        return Bad("modalities", "only [\"text\"] is supported", RefusalKind::kUnsupportedParameter);
      }
    }
  }
  for (const char* key : {"audio", "prediction", "web_search_options", "reasoning_effort", "verbosity"}) {
    if (auto it = body.find(key); it != body.end() && !it->is_null()) {
      return Bad(key, "not supported (only null)", RefusalKind::kUnsupportedParameter);
    }
  }
  for (const char* key : {"safety_identifier", "prompt_cache_key"}) {
    if (auto it = body.find(key); it != body.end() && !it->is_null() && !it->is_string()) {
      return WrongType(key, *it, "a string");
    }
  }
  if (auto it = body.find("chat_template_kwargs"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("chat_template_kwargs", *it, "an object");
    if (!it->empty()) {
      return Bad("chat_template_kwargs." + it->begin().key(), "chat template arguments are not supported",
                 RefusalKind::kUnsupportedParameter);
    }
  }
  return std::nullopt;
}

// Content of one chat message: a string, or a list of parts: text parts ({"type": "text",
// "text": ...}) and image parts ({"type": "image_url", "image_url": {"url": ...}}, or the URL as a
// plain string, as vLLM accepts). The text parts are also joined with "\n" into `content` (what a
// text model's template renders); the image's bytes are resolved later (ValidateRequest), and its
// refusals name `<path>[j].image_url.url`.
std::optional<Refusal> MessageContent(const json& content, const std::string& path, ChatMessage* message,
                                      std::vector<ImageData>* images) {
  if (content.is_string()) {
    message->content = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return WrongType(path, content, "a string or an array of content parts");
  // OpenAI refuses an empty parts array (minItems 1); it rendered an empty turn here.
  if (content.empty()) return Bad(path, "an empty array; give at least one content part (or a string)");
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const json& part = content[j];
    const std::string ppath = absl::StrCat(path, "[", j, "]");
    if (!part.is_object()) return WrongType(ppath, part, "an object");
    auto type = part.find("type");
    if (type == part.end() || type->is_null()) return Bad(ppath + ".type", "missing", RefusalKind::kMissingParameter);
    if (!type->is_string()) return WrongType(ppath + ".type", *type, "a string");
    const std::string t = type->get<std::string>();
    // A part's keys: its type, its payload, cache_control (a caching hint) and an image's uuid
    // (vLLM's cache key), which change no output; others are refused, not dropped.
    for (auto key = part.begin(); key != part.end(); ++key) {
      if (key.key() == "type" || key.key() == "cache_control" ||
          key.key() == (t == "image_url" ? "image_url" : "text") || (t == "image_url" && key.key() == "uuid")) {
        continue;
      }
      if (t != "text" && t != "input_text" && t != "image_url") break;  // the type itself is refused below
      return Bad(ppath + "." + key.key(), absl::StrCat("unknown field for the content part of type '", t, "'"),
                 RefusalKind::kUnsupportedParameter);
    }
    if (t == "text" || t == "input_text") {
      auto it = part.find("text");
      if (it == part.end() || it->is_null()) return Bad(ppath + ".text", "missing", RefusalKind::kMissingParameter);
      if (!it->is_string()) return WrongType(ppath + ".text", *it, "a string");
      if (!text.empty()) text += "\n";
      text += it->get<std::string>();
      message->parts.push_back({false, it->get<std::string>(), -1});
    } else if (t == "image_url") {
      auto it = part.find("image_url");
      if (it == part.end() || it->is_null()) {
        return Bad(ppath + ".image_url", "missing ({\"url\": \"data:image/png;base64,...\"})",
                   RefusalKind::kMissingParameter);
      }
      ImageData image;
      image.part_field = ppath;
      if (it->is_string()) {  // vLLM's shorthand: the URL itself
        image.url = it->get<std::string>();
        image.field = ppath + ".image_url";
      } else if (it->is_object()) {
        image.field = ppath + ".image_url.url";
        auto url = it->find("url");
        if (url == it->end() || url->is_null()) return Bad(image.field, "missing", RefusalKind::kMissingParameter);
        if (!url->is_string()) return WrongType(image.field, *url, "a string");
        image.url = url->get<std::string>();
        // OpenAI's detail (auto/low/high) has no meaning here: the processor's resize decides. Its
        // values are still OpenAI's, and other keys (a misspelt "detial") are refused, not dropped.
        if (auto detail = it->find("detail"); detail != it->end() && !detail->is_null()) {
          if (!detail->is_string()) return WrongType(ppath + ".image_url.detail", *detail, "a string");
          const std::string& d = detail->get_ref<const std::string&>();
          if (d != "auto" && d != "low" && d != "high") {
            return Bad(ppath + ".image_url.detail",
                       absl::StrCat("'", ShownValue(d), "' is not auto, low or high (the resize is the processor's)"));
          }
        }
        for (auto key = it->begin(); key != it->end(); ++key) {
          if (key.key() == "url" || key.key() == "detail") continue;
          return Bad(ppath + ".image_url." + key.key(), "unknown field for image_url (expected url, detail)",
                     RefusalKind::kUnsupportedParameter);
        }
      } else {
        return WrongType(ppath + ".image_url", *it, "an object {\"url\": ...} or a URL string");
      }
      if (image.url.empty()) return Bad(image.field, "must not be empty");
      message->parts.push_back({true, std::string(), static_cast<int32_t>(images->size())});
      images->push_back(std::move(image));
    } else if (t == "input_image" || t == "image" || t == "input_audio" || t == "audio" || t == "video_url" ||
               t == "file") {
      return Bad(ppath, absl::StrCat("content part type '", t, "' is not supported; send 'text' and 'image_url' parts"),
                 RefusalKind::kUnsupportedContent);
    } else {
      return Bad(ppath + ".type",
                 absl::StrCat("unknown content part type '", ShownValue(t), "'; expected 'text' or 'image_url'"));
    }
  }
  message->content = std::move(text);
  return std::nullopt;
}

// A message's keys: those ParseMessages reads; those clients send back from an earlier reply that
// change nothing at null / empty / false (refusal, annotations, audio, function_call, prefix); and
// reasoning_content / reasoning, which the GLM chat templates leave out of earlier turns. Anything else is
// refused naming it: "prefix": true (continue this assistant message) or a tool_call_id dropped
// would make another prompt than the one asked for.
std::optional<Refusal> UnknownMessageField(const json& message, const std::string& path) {
  for (auto it = message.begin(); it != message.end(); ++it) {
    const std::string& key = it.key();
    if (key == "role" || key == "content" || key == "name" || key == "tool_calls") continue;
    if (key == "reasoning_content" || key == "reasoning") {  // vLLM's names, older and newer
      if (!it->is_null() && !it->is_string()) return WrongType(path + "." + key, *it, "a string");
      continue;
    }
    const bool nothing = it->is_null() || (it->is_array() && it->empty()) || (it->is_object() && it->empty()) ||
                         (it->is_boolean() && !it->get<bool>());
    if (nothing &&
        (key == "refusal" || key == "annotations" || key == "audio" || key == "function_call" || key == "prefix")) {
      continue;
    }
    return Bad(path + "." + key, "unknown or unsupported message field (expected role, content, name)",
               RefusalKind::kUnsupportedParameter);
  }
  return std::nullopt;
}

std::optional<Refusal> ParseMessages(const json& body, GenerateRequest* out_request) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null())
    return Bad("messages", "missing (an array of {role, content})", RefusalKind::kMissingParameter);
  if (!it->is_array()) return WrongType("messages", *it, "an array");
  if (it->empty()) return Bad("messages", "must contain at least one message");
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string path = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return WrongType(path, m, "an object");
    auto role = m.find("role");
    if (role == m.end() || role->is_null()) return Bad(path + ".role", "missing", RefusalKind::kMissingParameter);
    if (!role->is_string()) return WrongType(path + ".role", *role, "a string");
    std::string r = role->get<std::string>();
    // OpenAI's newer name for the system message (its models take developer messages in place of
    // system ones); GLM's templates know system.
    if (r == "developer") r = "system";
    if (r != "system" && r != "user" && r != "assistant") {
      return Bad(path + ".role",
                 absl::StrCat("unknown role '", ShownValue(r), "'; expected system (or developer), user or assistant"));
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      return Bad(path + ".content", "missing", RefusalKind::kMissingParameter);
    }
    ChatMessage message;
    message.role = r;
    if (auto e = MessageContent(*content, path + ".content", &message, &out_request->images)) return e;
    if (auto name = m.find("name"); name != m.end() && !name->is_null() && !name->is_string()) {
      return WrongType(path + ".name", *name, "a string");
    }
    if (auto tc = m.find("tool_calls"); tc != m.end() && !tc->is_null() && !(tc->is_array() && tc->empty())) {
      return Bad(path + ".tool_calls", "tool calls are not supported", RefusalKind::kUnsupportedParameter);
    }
    if (auto e = UnknownMessageField(m, path)) return e;
    out_request->messages.push_back(std::move(message));
  }
  return std::nullopt;
}

// A JSON array of token ids (a prompt's, stop_token_ids) appended to `out`; a refusal names the
// element (`prefix[i]`). Ids are checked against the vocabulary later, by ValidateRequest.
std::optional<Refusal> TokenIds(const json& ids, const std::string& prefix, std::vector<int32_t>* out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const json& v = ids[i];
    const std::string path = absl::StrCat(prefix, "[", i, "]");
    if (!v.is_number_integer()) return WrongType(path, v, "an integer token id");
    if (!JsonIntegerIn(v, 0, std::numeric_limits<int32_t>::max())) {
      return Bad(path, absl::StrCat(v.dump(), " is not a token id"));
    }
    out->push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return std::nullopt;
}

std::optional<Refusal> ParsePrompt(const json& body, GenerateRequest* out_request) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null())
    return Bad("prompt", "missing (a string or an array of token ids)", RefusalKind::kMissingParameter);
  if (it->is_string()) {
    if (it->get_ref<const std::string&>().empty()) return Bad("prompt", "must not be empty");
    out_request->prompt = it->get<std::string>();
    return std::nullopt;
  }
  if (!it->is_array()) return WrongType("prompt", *it, "a string or an array of token ids");
  if (it->empty()) return Bad("prompt", "must not be empty");
  const json* ids = &*it;
  std::string prefix = "prompt";
  if ((*it)[0].is_string() || (*it)[0].is_array()) {  // a batch: n = 1 prompt only
    if (it->size() != 1) {
      return Bad("prompt", "only one prompt per request is supported", RefusalKind::kUnsupportedParameter);
    }
    if ((*it)[0].is_string()) {
      if ((*it)[0].get_ref<const std::string&>().empty()) return Bad("prompt[0]", "must not be empty");
      out_request->prompt = (*it)[0].get<std::string>();
      return std::nullopt;
    }
    ids = &(*it)[0];
    prefix = "prompt[0]";
    if (ids->empty()) return Bad(prefix, "must not be empty");
  }
  return TokenIds(*ids, prefix, &out_request->input_ids);
}

}  // namespace

std::string HttpErrorBody(const HttpError& error) {
  json e = {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}};
  return JsonDump(json{{"error", e}});
}

std::optional<Refusal> ParseApiRequest(ApiKind kind, const std::string& body, ApiRequest* out, int32_t max_tokens_cap,
                                       const SamplingDefaults& defaults) {
  out->kind = kind;
  if (MaxDepth(body) > kMaxJsonDepth) {
    return Bad("", absl::StrCat("request body nests deeper than ", kMaxJsonDepth, " levels"),
               RefusalKind::kInvalidJson);
  }
  json parsed;
  try {
    parsed = json::parse(body);
  } catch (const json::parse_error& e) {
    return Bad("", absl::StrCat("invalid JSON at byte ", e.byte, ": ", JsonErrorText(e)), RefusalKind::kInvalidJson);
  } catch (const json::exception& e) {  // a number too large for a double (1e309)
    return Bad("", absl::StrCat("invalid JSON: ", JsonErrorText(e)), RefusalKind::kInvalidJson);
  }
  if (!parsed.is_object())
    return Bad("", absl::StrCat("request body must be a JSON object, got ", TypeName(parsed)),
               RefusalKind::kInvalidType);
  if (auto e = UnknownField(kind, parsed)) return e;
  if (auto e = NoOpOnly(parsed)) return e;

  if (auto it = parsed.find("model"); it == parsed.end() || it->is_null()) {
    return Bad("model", "missing", RefusalKind::kMissingParameter);
  } else if (!it->is_string()) {
    return WrongType("model", *it, "a string");
  } else if (it->get_ref<const std::string&>().empty()) {
    return Bad("model", "is empty (name the model: GET /v1/models lists the ids served)");
  } else {
    out->model = it->get<std::string>();
  }
  GenerateRequest& request = out->request;
  if (kind == ApiKind::kChat) {
    if (auto e = ParseMessages(parsed, &request)) return e;
  } else {
    if (auto e = ParsePrompt(parsed, &request)) return e;
  }

  std::optional<int64_t> max_tokens;
  const char* max_key = "max_tokens";
  if (kind == ApiKind::kChat && parsed.contains("max_completion_tokens") &&
      !parsed["max_completion_tokens"].is_null()) {
    max_key = "max_completion_tokens";
  }
  // The upper bound is this server's setting, not the API's: the refusal says which.
  auto get_max_tokens = [&](const char* key, std::optional<int64_t>* out) -> std::optional<Refusal> {
    std::optional<Refusal> e = GetInt(parsed, key, 1, max_tokens_cap, out);
    const auto it = parsed.find(key);
    if (e && it != parsed.end() && JsonIntegerIn(*it, max_tokens_cap + 1, std::numeric_limits<int64_t>::max())) {
      e->message = absl::StrCat(e->message, " (the upper bound is this server's --max-new-tokens-cap)");
    }
    return e;
  };
  if (auto e = get_max_tokens(max_key, &max_tokens)) return e;
  // Both given: the newer field counts, the older is still checked (a bad value is a client bug).
  if (std::string_view(max_key) == "max_completion_tokens") {
    std::optional<int64_t> unused;
    if (auto e = get_max_tokens("max_tokens", &unused)) return e;
  }
  if (max_tokens) request.max_new_tokens = static_cast<int32_t>(*max_tokens);

  request.temperature = defaults.temperature;
  request.top_p = defaults.top_p;
  request.top_k = defaults.top_k;
  std::optional<double> temperature, top_p, freq, presence;
  if (auto e = GetNumber(parsed, "temperature", 0.0, 2.0, &temperature)) return e;
  if (temperature) request.temperature = static_cast<float>(*temperature);
  const double inf = std::numeric_limits<double>::infinity();
  if (auto e = GetNumber(parsed, "top_p", -inf, inf, &top_p)) return e;
  if (top_p) {
    if (!(*top_p > 0.0 && *top_p <= 1.0)) return Bad("top_p", absl::StrCat(*top_p, " is outside (0, 1]"));
    // Below float's range a positive top_p would round to 0, which means unset (keep every token);
    // any positive top_p that small keeps the most likely token alone, as the least float does.
    request.top_p = std::max(static_cast<float>(*top_p), std::numeric_limits<float>::denorm_min());
  }
  if (auto e = GetNumber(parsed, "frequency_penalty", kMinOpenAiPenalty, kMaxOpenAiPenalty, &freq)) return e;
  if (freq) request.frequency_penalty = static_cast<float>(*freq);
  if (auto e = GetNumber(parsed, "presence_penalty", kMinOpenAiPenalty, kMaxOpenAiPenalty, &presence)) return e;
  if (presence) request.presence_penalty = static_cast<float>(*presence);
  // vLLM's extra sampling parameter: 1 = off; unlike the proto, 0 is refused (not "unset").
  std::optional<double> repetition;
  if (auto e = GetNumber(parsed, "repetition_penalty", -inf, inf, &repetition)) {
    if (e->kind != RefusalKind::kInvalidType) {  // NaN/inf cannot come from JSON; kept for safety
      e->message = absl::StrCat("repetition_penalty: must be in (0, ", kMaxRepetitionPenalty, "] (1 = off)");
    }
    return e;
  }
  if (repetition) {
    if (!(*repetition > 0.0 && *repetition <= kMaxRepetitionPenalty)) {
      return Bad("repetition_penalty",
                 absl::StrCat(*repetition, " is outside (0, ", kMaxRepetitionPenalty, "] (1 = off)"));
    }
    request.repetition_penalty = static_cast<float>(*repetition);
    if (request.repetition_penalty == 0.0f) {  // 0 would mean unset (1): the opposite of what was asked
      return Bad("repetition_penalty", absl::StrCat(*repetition, " is below the least 32-bit float (",
                                                    std::numeric_limits<float>::denorm_min(), "); (0, ",
                                                    kMaxRepetitionPenalty, "] (1 = off)"));
    }
  }
  // vLLM's extra parameters: stop ids are masked until min_tokens new tokens exist (the proto's
  // min_new_tokens); ignore_eos: the model's end ids do not end the output (as vLLM, not masked).
  std::optional<int64_t> min_tokens;
  if (auto e = GetInt(parsed, "min_tokens", 0, std::numeric_limits<int32_t>::max(), &min_tokens)) return e;
  if (min_tokens) request.min_new_tokens = static_cast<int32_t>(*min_tokens);
  if (auto e = GetBool(parsed, "ignore_eos", &request.ignore_eos)) return e;

  // vLLM's per-request processor arguments; max_pixels is the one this server takes.
  if (auto it = parsed.find("mm_processor_kwargs"); it != parsed.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("mm_processor_kwargs", *it, "an object");
    for (auto kw = it->begin(); kw != it->end(); ++kw) {
      if (kw.key() != "max_pixels") {
        return Bad(absl::StrCat("mm_processor_kwargs.", kw.key()), "not supported (only max_pixels)",
                   RefusalKind::kUnsupportedParameter);
      }
    }
    std::optional<int64_t> max_pixels;
    if (auto e = GetInt(*it, "max_pixels", 1, std::numeric_limits<int64_t>::max(), &max_pixels)) {
      e->field = "mm_processor_kwargs.max_pixels";
      e->message = "mm_processor_kwargs." + e->message;
      // The parser does not know the model's range (the image settings check a positive budget
      // and name theirs); "outside [1, 2^63 - 1]" would read as if any positive value passed.
      // A value past 64 bits keeps that message: it is the bound it crossed.
      const json& given = (*it)["max_pixels"];
      if (e->kind == RefusalKind::kInvalidValue && given.is_number() && given.get<double>() < 1.0) {
        e->message = absl::StrCat("mm_processor_kwargs.max_pixels: ", given.dump(),
                                  " is below 1 (a pixel budget within the server's image settings)");
      }
      return e;
    }
    if (max_pixels) request.max_pixels = *max_pixels;
  }

  std::optional<int64_t> seed, n, top_k;
  if (auto e = GetInt(parsed, "seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), &seed))
    return e;
  if (seed) request.seed = static_cast<uint64_t>(*seed);
  if (auto e = GetInt(parsed, "n", 1, 1, &n)) {
    if (e->kind == RefusalKind::kInvalidValue) {
      e->message = "n: only n = 1 is supported";
      e->kind = RefusalKind::kUnsupportedParameter;  // a value the API defines, not implemented here
    }
    return e;
  }
  // vLLM's "off" is -1 (its default, which clients spelling out vLLM's defaults send) or 0.
  if (auto e = GetInt(parsed, "top_k", -1, std::numeric_limits<int32_t>::max(), &top_k)) return e;
  if (top_k) request.top_k = static_cast<int32_t>(std::max<int64_t>(*top_k, 0));

  if (auto it = parsed.find("stop"); it != parsed.end() && !it->is_null()) {
    if (it->is_string()) {
      request.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      for (size_t i = 0; i < it->size(); ++i) {
        if (!(*it)[i].is_string()) return WrongType(absl::StrCat("stop[", i, "]"), (*it)[i], "a string");
        request.stop.push_back((*it)[i].get<std::string>());
      }
    } else {
      return WrongType("stop", *it, "a string or an array of strings");
    }
  }

  // vLLM's stop_token_ids: ids that end the output besides the model's own end ids.
  if (auto it = parsed.find("stop_token_ids"); it != parsed.end() && !it->is_null()) {
    if (!it->is_array()) return WrongType("stop_token_ids", *it, "an array of token ids");
    if (auto e = TokenIds(*it, "stop_token_ids", &request.stop_token_ids)) return e;
    request.stop_token_ids_add_to_defaults = true;
  }

  if (auto e = GetBool(parsed, "stream", &out->stream)) return e;
  if (auto e = GetBool(parsed, "return_token_ids", &out->return_token_ids)) return e;
  if (auto it = parsed.find("stream_options"); it != parsed.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("stream_options", *it, "an object");
    if (!out->stream) return Bad("stream_options", "only allowed when stream is true");
    for (auto option = it->begin(); option != it->end(); ++option) {
      const std::string path = "stream_options." + option.key();
      std::optional<Refusal> e;
      if (option.key() == "include_usage") {
        e = GetBool(*it, "include_usage", &out->include_usage);
      } else if (option.key() == "continuous_usage_stats") {
        e = GetBool(*it, "continuous_usage_stats", &out->continuous_usage);
      } else if (option.key() == "include_obfuscation") {
        // OpenAI pads stream events against length side channels; the padding carries nothing a
        // client reads, so either value is served as the stream without it.
        bool obfuscation = false;
        e = GetBool(*it, "include_obfuscation", &obfuscation);
      } else {
        return Bad(path, "unknown stream option (include_usage, continuous_usage_stats, include_obfuscation)",
                   RefusalKind::kUnsupportedParameter);
      }
      if (e) {
        e->field = path;
        e->message = "stream_options." + e->message;
        return e;
      }
    }
  }
  bool flag = false;
  if (auto e = GetBool(parsed, "logprobs", &flag)) {
    if (kind == ApiKind::kChat) return e;
  }
  if (kind == ApiKind::kChat && flag) return Bad("logprobs", "not supported", RefusalKind::kUnsupportedParameter);
  if (kind == ApiKind::kCompletion) {
    if (auto it = parsed.find("logprobs"); it != parsed.end() && !it->is_null()) {
      if (!it->is_number_integer()) return WrongType("logprobs", *it, "an integer");
      // Even 0 asks for the sampled tokens' logprobs (OpenAI's legacy completions): not given here.
      return Bad("logprobs", "not supported (log probabilities are not returned)", RefusalKind::kUnsupportedParameter);
    }
    std::optional<int64_t> best_of;
    if (auto e = GetInt(parsed, "best_of", 1, 1, &best_of)) {
      if (e->kind == RefusalKind::kInvalidValue) {
        e->message = "best_of: only best_of = 1 is supported";
        e->kind = RefusalKind::kUnsupportedParameter;
      }
      return e;
    }
    if (auto it = parsed.find("suffix"); it != parsed.end() && !it->is_null()) {
      return Bad("suffix", "not supported", RefusalKind::kUnsupportedParameter);
    }
  }
  if (auto it = parsed.find("tools"); it != parsed.end() && !it->is_null()) {
    if (!it->is_array()) return WrongType("tools", *it, "an array");
    if (!it->empty()) return Bad("tools", "tool calling is not supported", RefusalKind::kUnsupportedParameter);
  }
  if (auto it = parsed.find("user"); it != parsed.end() && !it->is_null() && !it->is_string()) {
    return WrongType("user", *it, "a string");
  }
  if (auto it = parsed.find("response_format"); it != parsed.end() && !it->is_null()) {
    if (!it->is_object()) return WrongType("response_format", *it, "an object");
    auto type = it->find("type");
    if (type == it->end() || !type->is_string())
      return Bad("response_format.type", "expected a string", RefusalKind::kInvalidType);
    if (type->get<std::string>() != "text") {
      return Bad("response_format.type", "only 'text' is supported", RefusalKind::kUnsupportedParameter);
    }
  }
  return std::nullopt;
}

HttpError ToHttpError(const Refusal& refusal) {
  HttpError e;
  e.message = refusal.message;
  e.param = refusal.field;
  // 429 and 503 say when to come back: the refusal's hint, at least a second.
  auto busy = [&](int status, const char* type, const char* code) {
    e.status = status;
    e.type = type;
    e.code = code;
    e.retry_after_s = static_cast<int>(std::max<int64_t>(1, (refusal.retry_after_ms + 999) / 1000));
  };
  switch (refusal.kind) {
    case RefusalKind::kInvalidValue:
      e.code = "invalid_value";
      break;
    case RefusalKind::kInvalidType:
      e.code = "invalid_type";
      break;
    case RefusalKind::kMissingParameter:
      e.code = "missing_required_parameter";
      break;
    case RefusalKind::kUnsupportedParameter:
      e.code = "unsupported_parameter";
      break;
    case RefusalKind::kUnsupportedContent:
      e.code = "unsupported_content_type";
      break;
    case RefusalKind::kInvalidJson:
      e.code = "invalid_json";
      break;
    case RefusalKind::kContextLength:
      e.code = "context_length_exceeded";
      break;
    case RefusalKind::kTooLargeForMemory:
      e.code = "request_too_large_for_memory";
      break;
    case RefusalKind::kBadRequest:
      e.code = "bad_request";
      break;
    case RefusalKind::kPayloadTooLarge:
      e.status = 413;
      e.code = "payload_too_large";
      break;
    case RefusalKind::kUnsupportedMediaType:
      e.status = 415;
      e.code = "unsupported_media_type";
      break;
    case RefusalKind::kNotFound:
      e.status = 404;
      e.code = "not_found";
      break;
    case RefusalKind::kModelNotFound:
      e.status = 404;
      e.code = "model_not_found";
      break;
    case RefusalKind::kRequestTimeout:
      e.status = 408;
      e.code = "request_timeout";
      break;
    case RefusalKind::kHeaderTooLarge:
      e.status = 431;
      e.code = "request_header_fields_too_large";
      break;
    case RefusalKind::kLengthRequired:
      e.status = 411;
      e.code = "length_required";
      break;
    case RefusalKind::kUnauthenticated:
      e.status = 401;
      e.code = "invalid_api_key";
      break;
    case RefusalKind::kClientQuota:
      busy(429, "rate_limit_error", "rate_limit_exceeded");
      break;
    case RefusalKind::kQueueFull:
      busy(429, "rate_limit_error", "overloaded");
      break;
    case RefusalKind::kDraining:
      busy(503, "service_unavailable_error", "draining");
      break;
    case RefusalKind::kUnavailable:
      busy(503, "service_unavailable_error", "unavailable");
      break;
    case RefusalKind::kTooManyConnections:
      busy(503, "service_unavailable_error", "too_many_connections");
      break;
    case RefusalKind::kDeadline:
      e.status = 504;
      e.type = "timeout_error";
      e.code = "deadline_exceeded";
      if (e.param.empty()) e.param = "timeout";
      break;
    case RefusalKind::kCancelled:
      e.status = 499;  // the client closed: sent as 400 where anything is still sent
      e.code = "cancelled";
      break;
    case RefusalKind::kInternal:
      e.status = 500;
      e.type = "server_error";
      e.code = "internal_error";
      break;
  }
  return e;
}

std::optional<Refusal> ParseTimeout(const std::string& text, const std::string& param, std::chrono::milliseconds* out) {
  std::string number = text;
  double scale = 1000.0;
  if (number.size() > 2 && number.compare(number.size() - 2, 2, "ms") == 0) {
    number.resize(number.size() - 2);
    scale = 1.0;
  } else if (number.size() > 1 && number.back() == 's') {
    number.pop_back();
  }
  // Digits and a point only: strtod alone would also take "0x10", "inf" and leading spaces.
  const bool decimal =
      std::all_of(number.begin(), number.end(), [](char c) { return absl::ascii_isdigit(c) || c == '.'; });
  char* end = nullptr;
  const double v = number.empty() || !decimal ? -1 : std::strtod(number.c_str(), &end);
  if (number.empty() || end == nullptr || *end != '\0' || !std::isfinite(v) || v <= 0 || v * scale > 86400e3) {
    return Bad(param,
               absl::StrCat("'", text.substr(0, 64), "' is not a timeout in (0, 86400] seconds (e.g. 2.5, 300ms)"));
  }
  *out = std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(v * scale)));
  return std::nullopt;
}

}  // namespace glmserve
