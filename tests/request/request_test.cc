// The typed request and refusal (server/request/request.h): validation names fields in each front end's
// dialect, and a refusal renders as a gRPC status and as an OpenAI error from its typed fields
// alone (no message is read back).
#include "server/request/request.h"

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/engine.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/frontend/http_api.h"
#include "server/ops/port_probe.h"
#include "server/request/request_validation.h"

namespace glmserve {
namespace {

ValidationModel Model() {
  ValidationModel model;
  model.vocab_size = 100;
  model.max_context = 64;
  return model;
}

GenerateRequest Ids(std::vector<int32_t> ids, int32_t max_new_tokens) {
  GenerateRequest r;
  r.input_ids = std::move(ids);
  r.max_new_tokens = max_new_tokens;
  return r;
}

Refusal Refuse(const GenerateRequest& request, Dialect dialect) {
  InferenceRequest out;
  std::optional<Refusal> refusal = ValidateRequest(request, FrontendLimits(), Model(), dialect, &out);
  EXPECT_TRUE(refusal.has_value());
  return refusal.value_or(Refusal());
}

TEST(Refusal, FieldNamedInEachDialect) {
  const GenerateRequest over_cap = Ids({1, 2}, 5000);
  const Refusal proto = Refuse(over_cap, Dialect::kProto);
  EXPECT_EQ(proto.code, absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(proto.kind, RefusalKind::kInvalidValue);
  EXPECT_EQ(proto.field, "max_new_tokens");
  EXPECT_EQ(proto.message, "max_new_tokens: 5000 is outside [1, 4096] (unset means the default, 256)");
  const Refusal chat = Refuse(over_cap, Dialect::kOpenAiChat);
  EXPECT_EQ(chat.field, "max_tokens");
  EXPECT_EQ(chat.message, "max_tokens: 5000 is outside [1, 4096] (unset means the default, 256)");

  GenerateRequest min_over = Ids({1, 2}, 3);
  min_over.min_new_tokens = 5;
  EXPECT_EQ(Refuse(min_over, Dialect::kProto).message, "min_new_tokens: 5 is outside [0, max_new_tokens=3]");
  EXPECT_EQ(Refuse(min_over, Dialect::kOpenAiCompletion).message, "min_tokens: 5 is outside [0, max_tokens=3]");

  const GenerateRequest out_of_vocab = Ids({1, 200}, 3);
  EXPECT_EQ(Refuse(out_of_vocab, Dialect::kProto).field, "input_ids[1]");
  EXPECT_EQ(Refuse(out_of_vocab, Dialect::kOpenAiCompletion).field, "prompt[1]");
}

TEST(Refusal, PromptTooLongCarriesItsNumbers) {
  const Refusal r = Refuse(Ids(std::vector<int32_t>(70, 1), 1), Dialect::kProto);
  EXPECT_EQ(r.kind, RefusalKind::kContextLength);
  EXPECT_EQ(r.prompt_tokens, 70);
  EXPECT_EQ(r.allowed_prompt_tokens, 63);
  EXPECT_EQ(r.ToStatus(), absl::InvalidArgumentError("input_ids: 70 tokens; at most 63 prompt tokens allowed"));
  const HttpError e = ToHttpError(Refuse(Ids(std::vector<int32_t>(70, 1), 1), Dialect::kOpenAiCompletion));
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "context_length_exceeded");
  EXPECT_EQ(e.param, "prompt");
  EXPECT_EQ(e.message, "prompt: 70 tokens; at most 63 prompt tokens allowed");
  // An explicit max_new_tokens past the context is the same kind of refusal.
  const HttpError room = ToHttpError(Refuse(Ids({1, 2, 3}, 62), Dialect::kOpenAiChat));
  EXPECT_EQ(room.code, "context_length_exceeded");
  EXPECT_EQ(room.param, "max_tokens");
}

// Text too long for the context before tokenizing: the part named is the one holding most of it,
// else the messages together (200,000 one-byte messages were refused as messages[0].content).
TEST(Refusal, PromptTextTooLongNamesWhereTheTextIs) {
  auto tokenizer = tokenizer::Tokenizer::FromDirectory(GLMSERVE_TEST_MODEL_DIR);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ValidationModel model = Model();
  model.tokenizer = tokenizer->get();
  auto Refuse = [&model](const GenerateRequest& request, Dialect dialect) {
    InferenceRequest out;
    std::optional<Refusal> refusal = ValidateRequest(request, FrontendLimits(), model, dialect, &out);
    EXPECT_TRUE(refusal.has_value());
    return refusal.value_or(Refusal());
  };
  GenerateRequest one;
  one.messages.push_back({"user", "hi", {}});
  one.messages.push_back({"user", std::string(5000, 'a'), {}});
  const Refusal big = Refuse(one, Dialect::kOpenAiChat);
  EXPECT_EQ(big.field, "messages[1].content") << big.message;
  EXPECT_NE(big.message.find("5002 bytes of prompt text cannot fit"), std::string::npos) << big.message;
  GenerateRequest many;
  for (int i = 0; i < 5000; ++i) many.messages.push_back({"user", "a", {}});
  const Refusal spread = Refuse(many, Dialect::kOpenAiChat);
  EXPECT_EQ(spread.field, "messages") << spread.message;
  EXPECT_NE(spread.message.find("5000 bytes of prompt text (in 5000 messages) cannot fit"), std::string::npos)
      << spread.message;
}

// vLLM's ignore_eos: the model's end ids stop nothing and are not masked (it was min_tokens =
// max_tokens, which masked them and stop_token_ids, and switched stop strings off); the request's
// own stop_token_ids still stop.
TEST(Refusal, IgnoreEosLeavesOnlyTheRequestsStopIds) {
  GenerateRequest r = Ids({1, 2}, 0);
  r.ignore_eos = true;
  r.repetition_penalty = 1.5f;
  ValidationModel model = Model();
  model.eos_token_ids = {7, 8};
  InferenceRequest out;
  ASSERT_FALSE(ValidateRequest(r, FrontendLimits(), model, Dialect::kOpenAiCompletion, &out));
  EXPECT_EQ(out.params.max_new_tokens, 62);  // the default 256 shrunk to the context
  EXPECT_EQ(out.params.min_new_tokens, 0);
  EXPECT_TRUE(out.params.ignore_eos);
  EXPECT_TRUE(StopIds(out.params, model.eos_token_ids).empty());
  EXPECT_EQ(out.params.sampling.repetition_penalty, 1.5f);
  r.stop_token_ids = {9};
  r.stop_token_ids_add_to_defaults = true;  // HTTP's: added to the end ids, which ignore_eos drops
  InferenceRequest with_stops;
  ASSERT_FALSE(ValidateRequest(r, FrontendLimits(), model, Dialect::kOpenAiCompletion, &with_stops));
  EXPECT_EQ(StopIds(with_stops.params, model.eos_token_ids), (std::vector<int32_t>{9}));
}

// A request that ran out of device memory alone: FAILED_PRECONDITION through gRPC, a 400 naming
// it over HTTP, neither with a retry hint (a 429 / RESOURCE_EXHAUSTED is retried as it is).
TEST(Refusal, OutOfMemoryAloneIsNotRetryable) {
  const Refusal r = RefusalFromStatus(absl::FailedPreconditionError("out of memory running request r alone"));
  EXPECT_EQ(r.kind, RefusalKind::kTooLargeForMemory);
  EXPECT_EQ(r.ToStatus().code(), absl::StatusCode::kFailedPrecondition);
  const HttpError e = ToHttpError(r);
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "request_too_large_for_memory");
  EXPECT_EQ(e.retry_after_s, 0);
}

TEST(Refusal, EngineQueueFullRetryAfterFromThePayload) {
  absl::Status full = absl::ResourceExhaustedError("waiting queue is full; retry after 2500 ms");
  SetRetryAfterMs(&full, 2500);
  const Refusal r = RefusalFromStatus(full);
  EXPECT_EQ(r.kind, RefusalKind::kQueueFull);
  EXPECT_EQ(r.retry_after_ms, 2500);
  EXPECT_EQ(r.ToStatus().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.ToStatus().message(), full.message());  // gRPC: the engine's message as is
  const HttpError e = ToHttpError(r);
  EXPECT_EQ(e.status, 429);
  EXPECT_EQ(e.type, "rate_limit_error");
  EXPECT_EQ(e.code, "overloaded");
  EXPECT_EQ(e.retry_after_s, 3);
  // The text alone is not read: no payload, the default second.
  EXPECT_EQ(ToHttpError(RefusalFromStatus(absl::ResourceExhaustedError("retry after 9000 ms"))).retry_after_s, 1);
  // An engine restarting after a fault says when to come back too: 503 + Retry-After.
  absl::Status restarting = absl::UnavailableError("engine is restarting after a fault (x); retry after 4200 ms");
  SetRetryAfterMs(&restarting, 4200);
  const Refusal u = RefusalFromStatus(restarting);
  EXPECT_EQ(u.kind, RefusalKind::kUnavailable);
  EXPECT_EQ(u.retry_after_ms, 4200);
  EXPECT_EQ(ToHttpError(u).status, 503);
  EXPECT_EQ(ToHttpError(u).retry_after_s, 5);
}

TEST(Refusal, HttpShapes) {
  const HttpError quota =
      ToHttpError(MakeRefusal(absl::StatusCode::kResourceExhausted, RefusalKind::kClientQuota, "too many", 1000));
  EXPECT_EQ(quota.status, 429);
  EXPECT_EQ(quota.code, "rate_limit_exceeded");
  EXPECT_EQ(quota.retry_after_s, 1);
  const HttpError draining =
      ToHttpError(MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kDraining, "draining"));
  EXPECT_EQ(draining.status, 503);
  EXPECT_EQ(draining.code, "draining");
  EXPECT_EQ(draining.retry_after_s, 1);
  const HttpError deadline = ToHttpError(RefusalFromStatus(absl::DeadlineExceededError("late")));
  EXPECT_EQ(deadline.status, 504);
  EXPECT_EQ(deadline.type, "timeout_error");
  EXPECT_EQ(deadline.param, "timeout");
  const HttpError internal = ToHttpError(RefusalFromStatus(absl::InternalError("boom")));
  EXPECT_EQ(internal.status, 500);
  EXPECT_EQ(internal.type, "server_error");
  EXPECT_EQ(HttpErrorBody(quota),
            R"({"error":{"code":"rate_limit_exceeded","message":"too many","param":null,"type":"rate_limit_error"}})");
}

TEST(Refusal, JsonParserGivesTypedRefusals) {
  ApiRequest api;
  std::optional<Refusal> r = ParseApiRequest(
      ApiKind::kChat,
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]})",
      &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kUnsupportedContent);
  EXPECT_EQ(r->field, "messages[0].content[0]");
  EXPECT_EQ(ToHttpError(*r).code, "unsupported_content_type");
  // An image part is parsed (tests/request/media_test.cc); one without its URL is a missing field.
  r = ParseApiRequest(
      ApiKind::kChat,
      R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})", &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kMissingParameter);
  EXPECT_EQ(r->field, "messages[0].content[0].image_url.url");
  r = ParseApiRequest(ApiKind::kCompletion, R"({"model": "m", "prompt": "x", "temperature": "hot"})", &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kInvalidType);
  EXPECT_EQ(r->field, "temperature");
  r = ParseApiRequest(ApiKind::kCompletion, "{", &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kInvalidJson);
  EXPECT_EQ(ToHttpError(*r).param, "");
  ApiRequest ok;
  ASSERT_FALSE(ParseApiRequest(
      ApiKind::kCompletion, R"({"model": "m", "prompt": [1, 2], "presence_penalty": 0.5, "ignore_eos": true})", &ok));
  EXPECT_EQ(ok.request.input_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(ok.request.presence_penalty, 0.5f);
  EXPECT_TRUE(ok.request.ignore_eos);
}

// A client's key in a refused field's path is cut (a 2 MB unknown key was echoed whole into the
// 400's param and message, twice its size, and into the log line); so is an unknown part type.
TEST(Refusal, HugeUnknownKeysAndTypesAreCutInParamAndMessage) {
  const std::string big(2'000'000, 'K');
  const std::string bodies[] = {
      absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], ")", big, R"(": 1})"),
      absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": "hi", ")", big, R"(": 1}]})"),
      absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": ")", big, R"("}]}]})"),
      absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "x", ")", big,
                   R"(": 1}]}]})"),
  };
  for (const std::string& body : bodies) {
    ApiRequest api;
    const std::optional<Refusal> r = ParseApiRequest(ApiKind::kChat, body, &api);
    ASSERT_TRUE(r.has_value());
    EXPECT_LT(r->field.size(), 256u) << r->field.substr(0, 80);
    EXPECT_LT(r->message.size(), 512u) << r->message.substr(0, 80);
    EXPECT_NE(r->message.find(" bytes)"), std::string::npos) << r->message.substr(0, 300);  // cut, its size said
    EXPECT_LT(ToHttpError(*r).message.size(), 512u);
  }
}

// image_url objects are held to what the rest of the request is: detail takes OpenAI's values
// only, and a key besides url and detail (a misspelt "detial") is refused, not dropped.
TEST(Refusal, ImageUrlObjectKeysAndDetailAreChecked) {
  auto parse = [](const std::string& image_url) {
    ApiRequest api;
    return ParseApiRequest(ApiKind::kChat,
                           absl::StrCat(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", )",
                                        R"("text": "x"}, {"type": "image_url", "image_url": )", image_url, "}]}]}"),
                           &api);
  };
  for (const char* ok : {"auto", "low", "high"}) {
    std::optional<Refusal> r = parse(absl::StrCat(R"({"url": "data:image/png;base64,AAAA", "detail": ")", ok, R"("})"));
    EXPECT_FALSE(r) << ok << ": " << r->message;
  }
  std::optional<Refusal> ultra = parse(R"({"url": "data:image/png;base64,AAAA", "detail": "ultra"})");
  ASSERT_TRUE(ultra);
  EXPECT_EQ(ultra->field, "messages[0].content[1].image_url.detail");
  EXPECT_NE(ultra->message.find("'ultra' is not auto, low or high"), std::string::npos) << ultra->message;
  std::optional<Refusal> typo = parse(R"({"url": "data:image/png;base64,AAAA", "detial": "low"})");
  ASSERT_TRUE(typo);
  EXPECT_EQ(typo->field, "messages[0].content[1].image_url.detial");
  EXPECT_EQ(typo->kind, RefusalKind::kUnsupportedParameter);
}

// A field this server would drop is refused naming it, not ignored: unknown fields (a chat field
// sent to /v1/completions too), and known ones at a value that would change the output. At the
// values that change nothing they are accepted.
TEST(Refusal, JsonParserRefusesWhatItWouldDrop) {
  struct Case {
    ApiKind kind;
    const char* extra;  // fields after model and prompt / messages
    const char* field;  // "" = accepted
    RefusalKind kind_refused = RefusalKind::kUnsupportedParameter;
  };
  const Case cases[] = {
      {ApiKind::kChat, R"("foo": 1)", "foo"},
      {ApiKind::kChat, R"("prompt": "x")", "prompt"},
      {ApiKind::kCompletion, R"("messages": [])", "messages"},
      {ApiKind::kCompletion, R"("max_completion_tokens": 3)", "max_completion_tokens"},
      {ApiKind::kChat, R"("logit_bias": {"227": -100})", "logit_bias"},
      {ApiKind::kChat, R"("logit_bias": "junk")", "logit_bias", RefusalKind::kInvalidType},
      {ApiKind::kChat, R"("logit_bias": {}, "top_logprobs": 0, "tool_choice": "auto", "function_call": "none")", ""},
      {ApiKind::kChat, R"("top_logprobs": 5)", "top_logprobs"},
      {ApiKind::kChat, R"("tool_choice": "required")", "tool_choice"},
      {ApiKind::kChat, R"("tool_choice": {"type": "function", "function": {"name": "f"}})", "tool_choice"},
      {ApiKind::kChat, R"("tool_choice": 3)", "tool_choice", RefusalKind::kInvalidType},
      {ApiKind::kChat, R"("functions": [{"name": "f"}])", "functions"},
      {ApiKind::kChat, R"("skip_special_tokens": false)", "skip_special_tokens"},
      {ApiKind::kCompletion, R"("skip_special_tokens": true, "parallel_tool_calls": false, "user": "u",
                               "metadata": {"a": "b"}, "store": false, "service_tier": "auto")",
       ""},
      {ApiKind::kCompletion, R"("allowed_token_ids": [1])", "allowed_token_ids"},
      {ApiKind::kCompletion, R"("guided_json": {})", "guided_json"},
      {ApiKind::kCompletion, R"("stop_token_ids": [3, "4"])", "stop_token_ids[1]", RefusalKind::kInvalidType},
      {ApiKind::kCompletion, R"("stop_token_ids": [-1])", "stop_token_ids[0]", RefusalKind::kInvalidValue},
  };
  for (const Case& c : cases) {
    const std::string body = absl::StrCat(
        R"({"model": "m", )",
        c.kind == ApiKind::kChat ? R"("messages": [{"role": "user", "content": "hi"}])" : R"("prompt": "hi")", ", ",
        c.extra, "}");
    SCOPED_TRACE(body);
    ApiRequest api;
    const std::optional<Refusal> r = ParseApiRequest(c.kind, body, &api);
    if (std::string(c.field).empty()) {
      EXPECT_FALSE(r.has_value()) << r->message;
      continue;
    }
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->field, c.field);
    EXPECT_EQ(r->kind, c.kind_refused);
    EXPECT_EQ(ToHttpError(*r).status, 400);
    EXPECT_NE(r->message.find(c.field), std::string::npos) << r->message;
  }
  ApiRequest api;
  ASSERT_FALSE(
      ParseApiRequest(ApiKind::kCompletion, R"({"model": "m", "prompt": "hi", "stop_token_ids": [7, 9]})", &api));
  EXPECT_EQ(api.request.stop_token_ids, (std::vector<int32_t>{7, 9}));
  EXPECT_TRUE(api.request.stop_token_ids_add_to_defaults);
}

// Inside messages too: a key this server would drop is refused naming it ("prefix": true would
// continue an assistant message, a dropped tool_call_id changes the prompt); what clients echo back
// from a reply at values that change nothing is accepted, as is a content part's cache_control.
// An unknown role is quoted cut short (whole, 20 KB made a gRPC status past clients' 16 KB
// metadata limit: RESOURCE_EXHAUSTED, retried, instead of INVALID_ARGUMENT).
TEST(Refusal, MessageAndPartKeysRefusedNotDropped) {
  struct Case {
    const char* message;
    const char* field;  // "" = accepted
  };
  const Case cases[] = {
      {R"({"role": "user", "content": "hi", "weird": 1})", "messages[0].weird"},
      {R"({"role": "assistant", "content": "The answer is", "prefix": true})", "messages[0].prefix"},
      {R"({"role": "user", "content": "hi", "tool_call_id": "c1"})", "messages[0].tool_call_id"},
      {R"({"role": "user", "content": [{"type": "text", "text": "hi", "extra": 1}]})", "messages[0].content[0].extra"},
      {R"({"role": "user", "content": [{"type": "text", "text": "hi", "image_url": "data:x"}]})",
       "messages[0].content[0].image_url"},
      {R"({"role": "assistant", "content": "hi", "refusal": null, "annotations": [], "audio": null,
           "function_call": null, "prefix": false, "reasoning_content": "thought",
           "reasoning": null, "tool_calls": []})",
       ""},
      {R"({"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]})", ""},
      {R"({"role": "assistant", "content": "hi", "refusal": "no"})", "messages[0].refusal"},
      {R"({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"},
           "uuid": "u1"}]})",
       ""},
      {R"({"role": "user", "content": [{"type": "text", "text": "hi", "uuid": "u1"}]})", "messages[0].content[0].uuid"},
  };
  for (const Case& c : cases) {
    const std::string body = absl::StrCat(R"({"model": "m", "messages": [)", c.message, "]}");
    SCOPED_TRACE(body);
    ApiRequest api;
    const std::optional<Refusal> r = ParseApiRequest(ApiKind::kChat, body, &api);
    if (std::string(c.field).empty()) {
      EXPECT_FALSE(r.has_value()) << r->message;
      continue;
    }
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->field, c.field);
    EXPECT_EQ(r->kind, RefusalKind::kUnsupportedParameter);
    EXPECT_EQ(ToHttpError(*r).status, 400);
  }
  ApiRequest api;
  const std::string role(20000, 'x');
  const std::optional<Refusal> r = ParseApiRequest(
      ApiKind::kChat, absl::StrCat(R"({"model": "m", "messages": [{"role": ")", role, R"(", "content": "hi"}]})"),
      &api);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->field, "messages[0].role");
  EXPECT_LT(r->message.size(), 200u) << r->message.size();
  EXPECT_NE(r->message.find("(20000 bytes)"), std::string::npos) << r->message;
}

// vLLM's extra fields at their defaults are taken (clients that spell out vLLM's defaults send
// them; each was an "unknown field" 400); any other value is refused naming the field, as are
// stream options other than include_usage and continuous_usage_stats.
TEST(Refusal, VllmExtrasAtTheirDefaultsAreTakenAndOtherValuesNamed) {
  auto parse = [](ApiKind kind, const std::string& extra) {
    ApiRequest api;
    const std::string head = kind == ApiKind::kChat
                                 ? R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], )"
                                 : R"({"model": "m", "prompt": "hi", )";
    return ParseApiRequest(kind, absl::StrCat(head, extra, "}"), &api);
  };
  const std::string defaults =
      R"("add_generation_prompt": true, "continue_final_message": false, "include_stop_str_in_output": false,
         "min_p": 0, "echo": false, "chat_template_kwargs": {}, "spaces_between_special_tokens": false,
         "stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": false})";
  const std::optional<Refusal> taken = parse(ApiKind::kChat, defaults);
  EXPECT_FALSE(taken.has_value()) << taken->message;
  EXPECT_FALSE(parse(ApiKind::kChat, R"("stream": true, "stream_options": {"include_usage": true,
                                        "continuous_usage_stats": true})"));
  EXPECT_FALSE(parse(ApiKind::kCompletion, R"("min_p": 0.0, "echo": false, "include_stop_str_in_output": false)"));
  const std::pair<const char*, const char*> refused[] = {
      {R"("add_generation_prompt": false)", "add_generation_prompt"},
      {R"("continue_final_message": true)", "continue_final_message"},
      {R"("include_stop_str_in_output": true)", "include_stop_str_in_output"},
      {R"("min_p": 0.1)", "min_p"},
      {R"("echo": true)", "echo"},
      {R"("chat_template_kwargs": {"enable_thinking": false})", "chat_template_kwargs.enable_thinking"},
      {R"("stream": true, "stream_options": {"foo": 1})", "stream_options.foo"},
  };
  for (const auto& [extra, field] : refused) {
    const std::optional<Refusal> r = parse(ApiKind::kChat, extra);
    ASSERT_TRUE(r.has_value()) << extra;
    EXPECT_EQ(r->kind, RefusalKind::kUnsupportedParameter) << extra << ": " << r->message;
    EXPECT_EQ(r->field, field) << extra;
  }
  // Chat-only fields stay unknown to /v1/completions.
  const std::optional<Refusal> completion = parse(ApiKind::kCompletion, R"("add_generation_prompt": true)");
  ASSERT_TRUE(completion.has_value());
  EXPECT_EQ(completion->field, "add_generation_prompt");
}

// Each refusal states the range the parser takes: max_tokens [1, the server's cap], top_p (0, 1];
// an integer literal past 64 bits is out of range, not "not an integer"; a number past a double's
// range is invalid JSON without the JSON library's exception id; a wrong type for n says so.
TEST(Refusal, JsonParserRangesAreTheOnesItTakes) {
  auto refuse = [](const std::string& extra, int32_t cap = 4096) {
    ApiRequest api;
    std::optional<Refusal> r = ParseApiRequest(
        ApiKind::kCompletion, absl::StrCat(R"({"model": "m", "prompt": "hi", )", extra, "}"), &api, cap);
    EXPECT_TRUE(r.has_value()) << extra;
    return r.value_or(Refusal());
  };
  EXPECT_EQ(refuse(R"("max_tokens": 0)").message, "max_tokens: 0 is outside [1, 4096]");
  // The bound past which is this server's setting, and the refusal says so.
  EXPECT_EQ(refuse(R"("max_tokens": 5000)").message,
            "max_tokens: 5000 is outside [1, 4096] (the upper bound is this server's --max-new-tokens-cap)");
  EXPECT_EQ(refuse(R"("max_tokens": 123456789012345678901234567890)").message,
            "max_tokens: 1.2345678901234568e+29 is outside [1, 4096]");
  EXPECT_EQ(refuse(R"("max_tokens": 18446744073709551616)").kind, RefusalKind::kInvalidValue);
  EXPECT_EQ(refuse(R"("seed": 18446744073709551616)").kind, RefusalKind::kInvalidValue);
  EXPECT_EQ(refuse(R"("top_p": 0)").message, "top_p: 0 is outside (0, 1]");
  EXPECT_EQ(refuse(R"("top_p": 1.5)").message, "top_p: 1.5 is outside (0, 1]");
  // Past a 32-bit float's range a positive value would round to 0, which means unset: top_p keeps
  // the most likely token alone as the least float does; a repetition penalty is refused.
  EXPECT_NE(refuse(R"("repetition_penalty": 1e-50)").message.find("repetition_penalty: 1e-50 is below the least"),
            std::string::npos);
  {
    ApiRequest tiny;
    ASSERT_FALSE(ParseApiRequest(ApiKind::kCompletion, R"({"model": "m", "prompt": "hi", "top_p": 1e-50})", &tiny));
    EXPECT_GT(tiny.request.top_p, 0.0f);
  }
  const Refusal n = refuse(R"("n": "1")");
  EXPECT_EQ(n.kind, RefusalKind::kInvalidType);
  EXPECT_EQ(n.message, "n: expected an integer, got a string");
  EXPECT_EQ(refuse(R"("n": 2)").message, "n: only n = 1 is supported");
  // A value OpenAI defines that this server does not implement: unsupported_parameter, as
  // server/README.md says (it was invalid_value).
  EXPECT_EQ(refuse(R"("n": 2)").kind, RefusalKind::kUnsupportedParameter);
  // max_tokens beside max_completion_tokens is still checked (0 passed unchecked).
  {
    ApiRequest both;
    const std::optional<Refusal> r =
        ParseApiRequest(ApiKind::kChat,
                        R"({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0,
            "max_completion_tokens": 5})",
                        &both, 4096);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->field, "max_tokens");
  }
  const Refusal overflow = refuse(R"("temperature": 1e309)");
  EXPECT_EQ(overflow.kind, RefusalKind::kInvalidJson);
  EXPECT_EQ(overflow.message.find("json.exception"), std::string::npos) << overflow.message;
  EXPECT_NE(overflow.message.find("1e309"), std::string::npos) << overflow.message;
  // An unterminated string: the parser quotes what it read, cut short (not a whole prompt).
  ApiRequest unterminated;
  const std::optional<Refusal> cut = ParseApiRequest(
      ApiKind::kCompletion, absl::StrCat(R"({"model": "m", "prompt": ")", std::string(100000, 'a')), &unterminated);
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->kind, RefusalKind::kInvalidJson);
  EXPECT_LT(cut->message.size(), 300u) << cut->message.size();
  EXPECT_NE(cut->message.find("last read"), std::string::npos) << cut->message;
  ApiRequest ok;
  ASSERT_FALSE(
      ParseApiRequest(ApiKind::kCompletion, R"({"model": "m", "prompt": "hi", "max_tokens": 4096})", &ok, 4096));
  EXPECT_EQ(ok.request.max_new_tokens, 4096);
}

TEST(Refusal, TimeoutIsADecimalNumberOfSecondsOrMilliseconds) {
  std::chrono::milliseconds t{0};
  EXPECT_FALSE(ParseTimeout("2.5", "timeout", &t).has_value());
  EXPECT_EQ(t.count(), 2500);
  EXPECT_FALSE(ParseTimeout("300ms", "timeout", &t).has_value());
  EXPECT_EQ(t.count(), 300);
  for (const char* bad : {"0x10", "inf", " 5", "1e3", "-1", "0", "", "5 s"}) {
    const std::optional<Refusal> r = ParseTimeout(bad, "x-request-timeout", &t);
    ASSERT_TRUE(r.has_value()) << bad;
    EXPECT_EQ(r->field, "x-request-timeout");
  }
}

// The OpenAI API's stop_token_ids (vLLM's) end the output besides the model's eos ids; the
// proto's replace them.
TEST(Validation, StopTokenIdsAddToOrReplaceTheDefaults) {
  ValidationModel model = Model();
  model.eos_token_ids = {2};
  GenerateRequest request = Ids({1, 3}, 4);
  request.stop_token_ids = {7, 2, 9};
  InferenceRequest replaced;
  ASSERT_FALSE(ValidateRequest(request, FrontendLimits(), model, Dialect::kProto, &replaced).has_value());
  EXPECT_EQ(replaced.params.stop_token_ids, (std::vector<int32_t>{7, 2, 9}));
  request.stop_token_ids_add_to_defaults = true;
  InferenceRequest added;
  ASSERT_FALSE(ValidateRequest(request, FrontendLimits(), model, Dialect::kOpenAiCompletion, &added).has_value());
  EXPECT_EQ(added.params.stop_token_ids, (std::vector<int32_t>{2, 7, 9}));
  request.stop_token_ids = {};
  InferenceRequest defaults;
  ASSERT_FALSE(ValidateRequest(request, FrontendLimits(), model, Dialect::kOpenAiCompletion, &defaults).has_value());
  EXPECT_TRUE(defaults.params.stop_token_ids.empty()) << "empty: the engine's eos ids";
}

TEST(CodeName, EveryCodeIsAbseilsName) {
  for (int c = 0; c <= 16; ++c) {
    const auto code = static_cast<absl::StatusCode>(c);
    EXPECT_EQ(CodeName(code), absl::StatusCodeToString(code));
  }
}

TEST(FormatAddress, BracketsIpv6) {
  EXPECT_EQ(FormatAddress("127.0.0.1", 80), "127.0.0.1:80");
  EXPECT_EQ(FormatAddress("::1", 80), "[::1]:80");
  EXPECT_EQ(FormatAddress("[::1]", 80), "[::1]:80");
}

}  // namespace
}  // namespace glmserve
