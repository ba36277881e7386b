#include "server/http_server.h"

#include <httplib.h>

#include <condition_variable>
#include <deque>
#include <random>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/tokenizer/text_output.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/auth.h"
#include "server/client_quota.h"
#include "server/http_api.h"
#include "server/logging.h"

namespace glmserve {

using nlohmann::json;

namespace {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string FormatAddress(const std::string& host, int port) {
  if (host.find(':') != std::string::npos && host.front() != '[') return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

// gRPC code names, as the metrics and the gRPC front end's logs use them.
const char* CodeName(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return "OK";
    case absl::StatusCode::kCancelled: return "CANCELLED";
    case absl::StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case absl::StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case absl::StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case absl::StatusCode::kUnavailable: return "UNAVAILABLE";
    case absl::StatusCode::kInternal: return "INTERNAL";
    case absl::StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    default: return "UNKNOWN";
  }
}

const char* CodeForHttp(int status) {
  switch (status) {
    case 200: return "OK";
    case 401: return "UNAUTHENTICATED";
    case 429: return "RESOURCE_EXHAUSTED";
    case 503: return "UNAVAILABLE";
    case 504: return "DEADLINE_EXCEEDED";
    case 499: return "CANCELLED";
    case 500: return "INTERNAL";
    default: return "INVALID_ARGUMENT";
  }
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

struct HttpServer::State {
  explicit State(const HttpServerOptions& o) : options(o) {
    std::random_device rd;
    id_prefix = absl::StrFormat("glmh-%08x", rd());
  }
  const HttpServerOptions options;
  std::string id_prefix;
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> stopping{false};

  mutable std::mutex mu;
  std::condition_variable idle_cv;
  InferenceEngine* engine = nullptr;  // guarded by mu
  bool serving = false;               // guarded by mu
  bool draining = false;              // guarded by mu
  ValidationModel model;              // guarded by mu
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer;  // guarded by mu
  int active = 0;                     // guarded by mu

  void CallStarted() {
    std::lock_guard<std::mutex> lock(mu);
    ++active;
  }
  void CallDone() {
    std::lock_guard<std::mutex> lock(mu);
    if (--active == 0) idle_cv.notify_all();
  }
};

namespace {

using State = HttpServer::State;

// One request to the engine. Shared by the handler thread and the engine callbacks (which may
// outlive the handler when the client went away).
struct Call {
  std::shared_ptr<State> state;
  std::string request_id;
  std::string engine_id;
  std::string route;
  ApiKind kind = ApiKind::kChat;
  InferenceEngine* engine = nullptr;
  const std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  std::atomic<bool> first_token_logged{false};
  std::unique_ptr<tokenizer::TextOutput> text;  // engine thread until done
  std::string scratch;                          // engine thread

  std::mutex mu;
  std::condition_variable cv;
  // Text new since the last chunk; without a tokenizer there is no text, and each engine step's
  // ids travel instead (the choice's `token_ids`, as vLLM's return_token_ids), so a streaming
  // client still sees every step as it happens.
  struct Delta {
    std::string text;
    std::vector<int32_t> token_ids;
  };
  std::deque<Delta> deltas;  // guarded by mu
  bool done = false;               // guarded by mu
  bool client_gone = false;        // guarded by mu
  RequestResult result;            // guarded by mu; valid once done
  std::string tail;                // guarded by mu; text held back until the end
  ClientQuota::Lease quota;        // handler thread: released when the answer is complete

  void Cancel() {
    bool cancel = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      client_gone = true;
      cancel = !done;
    }
    if (cancel) engine->Cancel(engine_id);
  }
};

void LogRefused(const State& state, const std::string& request_id, const std::string& route, const HttpError& e) {
  if (state.options.observer != nullptr) state.options.observer->OnRequestFinished(CodeForHttp(e.status), nullptr);
  if (!state.options.log_requests) return;
  LogEvent(LogLevel::kInfo, "request_refused", request_id, "request refused",
           {{"rpc", route}, {"status", CodeForHttp(e.status)}, {"http_status", e.status},
            {"param", e.param}, {"message", e.message}});
}

void SetError(httplib::Response& res, const HttpError& e) {
  res.status = e.status == 499 ? 400 : e.status;
  if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
  res.set_content(HttpErrorBody(e), "application/json");
}

// --api-key-file / GLMSERVE_API_KEY: `Authorization: Bearer KEY`, else 401 (OpenAI's shape and
// code). *client: the key's name ("key#N"), or the peer address without keys
// (--max-requests-per-client). The presented key is never logged or echoed.
std::optional<HttpError> Authenticate(const State& state, const httplib::Request& req, std::string* client) {
  if (state.options.api_keys == nullptr) {
    *client = req.remote_addr;
    return std::nullopt;
  }
  HttpError e;
  e.status = 401;
  e.code = "invalid_api_key";
  if (!req.has_header("Authorization")) {
    e.message = "missing API key: send 'Authorization: Bearer KEY'";
    return e;
  }
  std::optional<std::string> who = state.options.api_keys->Check(req.get_header_value("Authorization"));
  if (!who) {
    e.message = "invalid API key";
    return e;
  }
  *client = std::move(*who);
  return std::nullopt;
}

const char* FinishName(FinishReason reason) {
  return reason == FinishReason::kLength ? "length" : "stop";
}

json Usage(const RequestResult& r) {
  const int64_t completion = static_cast<int64_t>(r.output_ids.size());
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", completion},
          {"total_tokens", r.prompt_tokens + completion}};
}

class Handler {
 public:
  explicit Handler(std::shared_ptr<State> state) : state_(std::move(state)) {}

  void Api(ApiKind kind, const httplib::Request& req, httplib::Response& res) {
    const std::string route = kind == ApiKind::kChat ? "/v1/chat/completions" : "/v1/completions";
    std::string request_id = req.get_header_value("x-request-id");
    if (request_id.empty() || !ValidateRequestId(request_id, state_->options.limits).ok()) {
      request_id = absl::StrCat(state_->id_prefix, "-", state_->next_id.fetch_add(1));
    }
    res.set_header("x-request-id", request_id);
    auto refuse = [&](const HttpError& e) {
      LogRefused(*state_, request_id, route, e);
      SetError(res, e);
      if (e.status == 401) res.set_header("WWW-Authenticate", "Bearer");
    };
    std::string client;
    if (auto e = Authenticate(*state_, req, &client)) return refuse(*e);
    ClientQuota::Lease quota;
    if (ClientQuota* q = state_->options.client_quota.get(); q != nullptr) {
      bool admitted = false;
      quota = q->TryAcquire(client, &admitted);
      if (!admitted) {
        HttpError e;
        e.status = 429;
        e.type = "rate_limit_error";
        e.code = "rate_limit_exceeded";
        e.message = QuotaExceededMessage(q->max_per_client());
        e.retry_after_s = 1;
        return refuse(e);
      }
    }

    // Deadline: ?timeout=, else a timeout / x-request-timeout header, else the default.
    auto deadline = std::chrono::steady_clock::time_point::max();
    if (state_->options.default_deadline_ms > 0) {
      deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(state_->options.default_deadline_ms);
    }
    for (const char* source : {"query", "timeout", "x-request-timeout"}) {
      const bool query = std::string(source) == "query";
      if (query ? !req.has_param("timeout") : !req.has_header(source)) continue;
      const std::string text = query ? req.get_param_value("timeout") : req.get_header_value(source);
      std::chrono::milliseconds timeout{0};
      if (auto e = ParseTimeout(text, query ? "timeout" : source, &timeout)) return refuse(*e);
      deadline = std::chrono::steady_clock::now() + timeout;
      break;
    }

    ApiRequest api;
    if (auto e = ParseApiRequest(kind, req.body, &api)) return refuse(*e);

    InferenceEngine* engine = nullptr;
    ValidationModel model;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->draining || state_->stopping) {
        HttpError e = FromEngineStatus(absl::UnavailableError("server is draining; retry on another replica"), kind);
        return refuse(e);
      }
      if (state_->engine == nullptr || !state_->serving) {
        return refuse(FromEngineStatus(absl::UnavailableError("model is loading or restarting; retry later"), kind));
      }
      engine = state_->engine;
      model = state_->model;
    }
    absl::StatusOr<InferenceRequest> request = ValidateInferRequest(api.proto, state_->options.limits, model);
    if (!request.ok()) return refuse(FromValidationStatus(request.status(), kind));
    // Penalties travel in api.proto (validated above); ignore_eos needs the resolved max.
    if (api.ignore_eos) request->params.min_new_tokens = request->params.max_new_tokens;
    request->deadline = deadline;

    auto call = std::make_shared<Call>();
    call->state = state_;
    call->request_id = request_id;
    call->route = route;
    call->kind = kind;
    call->engine = engine;
    call->engine_id = absl::StrCat(request_id, "#", state_->next_id.fetch_add(1));
    call->quota = std::move(quota);
    request->request_id = call->engine_id;
    if (model.tokenizer != nullptr) {
      call->text = std::make_unique<tokenizer::TextOutput>(
          model.tokenizer, std::vector<std::string>(api.proto.stop().begin(), api.proto.stop().end()));
    }
    const int32_t prompt_tokens = static_cast<int32_t>(request->input_ids.size());
    if (state_->options.log_requests) {
      LogEvent(LogLevel::kInfo, "request_accepted", request_id, "request accepted",
               {{"rpc", route}, {"engine_id", call->engine_id}, {"prompt_tokens", prompt_tokens},
                {"max_new_tokens", request->params.max_new_tokens}, {"stream", api.stream}});
    }

    RequestCallbacks callbacks;
    callbacks.on_tokens = [call](const std::vector<int32_t>& ids) {
      if (!call->first_token_logged.exchange(true) && call->state->options.log_requests) {
        LogEvent(LogLevel::kInfo, "first_token", call->request_id, "first token",
                 {{"rpc", call->route},
                  {"ttft_ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - call->start).count()}});
      }
      if (call->text == nullptr) {
        {
          std::lock_guard<std::mutex> lock(call->mu);
          call->deltas.push_back({std::string(), ids});
        }
        call->cv.notify_all();
        return;
      }
      call->scratch.clear();
      const size_t kept = call->text->Add(ids, &call->scratch);
      if (call->text->stopped() && kept > 0) call->engine->Cancel(call->engine_id);
      if (call->scratch.empty()) return;
      {
        std::lock_guard<std::mutex> lock(call->mu);
        call->deltas.push_back({call->scratch, {}});
      }
      call->cv.notify_all();
    };
    callbacks.on_done = [call](const RequestResult& engine_result) {
      RequestResult result = engine_result;
      std::string tail;
      if (call->text != nullptr) {
        if (call->text->stopped()) {  // a stop string ended it (the engine saw a cancel)
          result.status = absl::OkStatus();
          result.finish_reason = FinishReason::kStop;
          if (result.output_ids.size() > call->text->kept_ids()) result.output_ids.resize(call->text->kept_ids());
        }
        tail = call->text->Finish();
      }
      bool client_gone = false;
      {
        std::lock_guard<std::mutex> lock(call->mu);
        call->result = result;
        call->tail = std::move(tail);
        call->done = true;
        client_gone = call->client_gone;
      }
      call->cv.notify_all();
      const State& state = *call->state;
      const char* code = client_gone && !result.status.ok() ? "CANCELLED" : CodeName(result.status.code());
      if (state.options.observer != nullptr) state.options.observer->OnRequestFinished(code, &result);
      if (state.options.log_requests) {
        json fields = {{"rpc", call->route}, {"status", code}, {"finish", FinishReasonName(result.finish_reason)},
                       {"prompt_tokens", result.prompt_tokens}, {"completion_tokens", result.output_ids.size()},
                       {"queue_ms", result.queue_ms}, {"ttft_ms", result.ttft_ms}, {"total_ms", result.total_ms}};
        if (!result.status.ok()) fields["message"] = std::string(result.status.message());
        const bool failed = !result.status.ok() && std::string(code) != "CANCELLED" && std::string(code) != "DEADLINE_EXCEEDED";
        LogEvent(failed ? LogLevel::kWarn : LogLevel::kInfo, "request_finished", call->request_id,
                 "request finished", fields);
      }
    };
    absl::Status submit = engine->Submit(std::move(*request), std::move(callbacks));
    if (!submit.ok()) return refuse(FromEngineStatus(submit, kind));

    const std::string id = absl::StrCat(kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-", request_id);
    const int64_t created = NowSeconds();
    if (!api.stream) {
      Unary(call, api, id, created, res);
      call->quota.Release();  // before the answer goes out
      return;
    }
    Stream(call, api, id, created, res);
  }

 private:
  // Waits for the result; the listener's shutdown ends the wait with 503.
  void Unary(const std::shared_ptr<Call>& call, const ApiRequest& api, const std::string& id, int64_t created,
             httplib::Response& res) {
    RequestResult result;
    std::string text;
    {
      std::unique_lock<std::mutex> lock(call->mu);
      while (!call->done) {
        if (state_->stopping) {
          lock.unlock();
          call->Cancel();
          SetError(res, FromEngineStatus(absl::UnavailableError("server shut down before the request finished"), api.kind));
          return;
        }
        call->cv.wait_for(lock, std::chrono::milliseconds(100));
      }
      result = call->result;
      for (const Call::Delta& d : call->deltas) text += d.text;
      text += call->tail;
    }
    if (!result.status.ok()) return SetError(res, FromEngineStatus(result.status, api.kind));
    json body;
    if (api.kind == ApiKind::kChat) {
      body = {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", api.model},
              {"choices", json::array({{{"index", 0},
                                        {"message", {{"role", "assistant"}, {"content", text}}},
                                        {"logprobs", nullptr},
                                        {"finish_reason", FinishName(result.finish_reason)}}})},
              {"usage", Usage(result)}};
    } else {
      body = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", api.model},
              {"choices", json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr},
                                        {"finish_reason", FinishName(result.finish_reason)}}})},
              {"usage", Usage(result)}};
    }
    res.status = 200;
    res.set_content(Dump(body), "application/json");
  }

  // Server-sent events: one chunk per text delta, the finish chunk, the usage chunk when asked,
  // then "data: [DONE]". A failed write (client gone) cancels the engine request.
  void Stream(const std::shared_ptr<Call>& call, const ApiRequest& api, const std::string& id, int64_t created,
              httplib::Response& res) {
    state_->CallStarted();  // until the stream ends (the releaser)
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    const bool chat = api.kind == ApiKind::kChat;
    const std::string model = api.model;
    const bool include_usage = api.include_usage;
    auto chunk = [chat, id, created, model, include_usage](const json& choice_delta, const json& finish,
                                                           const std::vector<int32_t>& token_ids = {}) {
      json choice = chat ? json{{"index", 0}, {"delta", choice_delta}, {"logprobs", nullptr}, {"finish_reason", finish}}
                         : json{{"index", 0}, {"text", choice_delta}, {"logprobs", nullptr}, {"finish_reason", finish}};
      if (!token_ids.empty()) choice["token_ids"] = token_ids;
      json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created},
                {"model", model}, {"choices", json::array({choice})}};
      if (include_usage) j["usage"] = nullptr;
      return absl::StrCat("data: ", Dump(j), "\n\n");
    };
    auto sent_role = std::make_shared<bool>(false);
    std::shared_ptr<State> state = state_;
    res.set_chunked_content_provider(
        "text/event-stream",
        [call, chunk, chat, id, created, model, include_usage, sent_role, state](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) {
            if (sink.write(s.data(), s.size())) return true;
            call->Cancel();
            return false;
          };
          if (chat && !*sent_role) {
            *sent_role = true;
            if (!write(chunk({{"role", "assistant"}, {"content", ""}}, nullptr))) return false;
          }
          std::deque<Call::Delta> deltas;
          bool done = false;
          RequestResult result;
          std::string tail;
          {
            std::unique_lock<std::mutex> lock(call->mu);
            if (call->deltas.empty() && !call->done) {
              call->cv.wait_for(lock, std::chrono::seconds(1));
            }
            deltas.swap(call->deltas);
            done = call->done;
            if (done) {
              result = call->result;
              tail = call->tail;
            }
          }
          for (const Call::Delta& d : deltas) {
            if (!write(chunk(chat ? json{{"content", d.text}} : json(d.text), nullptr, d.token_ids))) return false;
          }
          if (!done) {
            if (state->stopping) {
              call->Cancel();
              HttpError e = FromEngineStatus(absl::UnavailableError("server shut down before the request finished"),
                                             chat ? ApiKind::kChat : ApiKind::kCompletion);
              write(absl::StrCat("data: ", HttpErrorBody(e), "\n\n"));
              sink.done();
              return true;
            }
            // Nothing new: an SSE comment finds a closed connection (the write fails).
            if (deltas.empty() && !write(": keep-alive\n\n")) return false;
            return true;
          }
          if (!result.status.ok()) {
            HttpError e = FromEngineStatus(result.status, chat ? ApiKind::kChat : ApiKind::kCompletion);
            write(absl::StrCat("data: ", HttpErrorBody(e), "\n\n"));
            sink.done();
            return true;
          }
          if (!tail.empty() && !write(chunk(chat ? json{{"content", tail}} : json(tail), nullptr))) return false;
          if (!write(chunk(chat ? json::object() : json(""), FinishName(result.finish_reason)))) return false;
          if (include_usage) {
            json j = {{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"},
                      {"created", created}, {"model", model}, {"choices", json::array()}, {"usage", Usage(result)}};
            if (!write(absl::StrCat("data: ", Dump(j), "\n\n"))) return false;
          }
          if (!write("data: [DONE]\n\n")) return false;
          sink.done();
          return true;
        },
        [call, state](bool success) {
          if (!success) call->Cancel();
          call->quota.Release();
          state->CallDone();
        });
  }

  std::shared_ptr<State> state_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--http-port: ", options.port, " is outside [0, 65535]"));
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->state_ = std::make_shared<State>(options);
  if (options.tls != nullptr) {  // --tls-cert/--tls-key (LoadTls checked them); --tls-client-ca: mutual
    const TlsConfig& tls = *options.tls;
    auto ssl = std::make_unique<httplib::SSLServer>(
        tls.cert_file.c_str(), tls.key_file.c_str(), tls.mutual() ? tls.client_ca_file.c_str() : nullptr);
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls-cert: the HTTP server cannot use '", tls.cert_file, "' / '", tls.key_file, "'"));
    }
    server->server_ = std::move(ssl);
  } else {
    server->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& svr = *server->server_;
  std::shared_ptr<State> state = server->state_;
  const int threads = std::max(2, options.threads);
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  svr.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  svr.set_keep_alive_max_count(1000);
  // Small SSE chunks go out at once instead of waiting on the client's delayed ACK (Nagle): 30-40
  // ms of TTFT on a kept-alive connection otherwise.
  svr.set_tcp_nodelay(true);
  // SO_REUSEADDR only (as the metrics listener): httplib's default adds SO_REUSEPORT, which let a
  // second server share a port in use and split the requests between the two processes.
  svr.set_socket_options([](socket_t sock) {
    const int on = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  });
  svr.set_read_timeout(std::chrono::seconds(30));
  svr.set_write_timeout(std::chrono::seconds(10));

  auto handler = std::make_shared<Handler>(state);
  // Every answer names its request: counted here so refusals by the library (413) carry one too.
  auto counted = [state](auto fn) {
    return [state, fn](const httplib::Request& req, httplib::Response& res) {
      state->CallStarted();
      fn(req, res);
      state->CallDone();
    };
  };
  svr.Post("/v1/chat/completions", counted([handler](const httplib::Request& req, httplib::Response& res) {
             handler->Api(ApiKind::kChat, req, res);
           }));
  svr.Post("/v1/completions", counted([handler](const httplib::Request& req, httplib::Response& res) {
             handler->Api(ApiKind::kCompletion, req, res);
           }));
  svr.Get("/v1/models", [state](const httplib::Request& req, httplib::Response& res) {
    std::string client;
    if (auto e = Authenticate(*state, req, &client)) {
      SetError(res, *e);
      res.set_header("WWW-Authenticate", "Bearer");
      return;
    }
    int32_t max_context = 0;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      max_context = state->model.max_context;
    }
    json model = {{"id", state->options.model_name}, {"object", "model"}, {"created", NowSeconds()},
                  {"owned_by", "glmserve"}};
    if (max_context > 0) model["max_model_len"] = max_context;
    res.set_content(Dump(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
  });
  svr.Get("/health", [state](const httplib::Request&, httplib::Response& res) {
    bool serving = false;
    {
      std::lock_guard<std::mutex> lock(state->mu);
      serving = state->serving && !state->draining && state->engine != nullptr && !state->stopping;
    }
    res.status = serving ? 200 : 503;
    res.set_content(Dump(json{{"status", serving ? "SERVING" : "NOT_SERVING"}}), "application/json");
  });
  svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    HttpError e;
    e.status = res.status;
    if (res.status == 413) {
      e.message = "request body too large";
      e.code = "payload_too_large";
    } else if (res.status == 404) {
      e.message = absl::StrCat("no route ", req.method, " ", req.path);
      e.code = "not_found";
    } else if (res.status >= 500) {
      e.type = "server_error";
      e.message = "internal error";
      e.code = "internal_error";
    } else {
      e.message = absl::StrCat("bad HTTP request (status ", res.status, ")");
      e.code = "bad_request";
    }
    res.set_content(HttpErrorBody(e), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    HttpError e;
    e.status = 500;
    e.type = "server_error";
    e.message = absl::StrCat("internal error: ", what);
    e.code = "internal_error";
    LogEvent(LogLevel::kError, "http_exception", "", e.message);
    SetError(res, e);
  });

  const int port = options.port == 0 ? svr.bind_to_any_port(options.host)
                                     : (svr.bind_to_port(options.host, options.port) ? options.port : -1);
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", FormatAddress(options.host, options.port), " (HTTP)"));
  }
  server->port_ = port;
  server->listener_ = std::thread([&svr] { svr.listen_after_bind(); });
  return server;
}

HttpServer::~HttpServer() { Shutdown(); }

std::string HttpServer::address() const { return FormatAddress(state_->options.host, port_); }

void HttpServer::SetEngine(InferenceEngine* engine) {
  const ModelInfo& info = engine->model_info();
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->model.vocab_size = info.vocab_size;
  state_->model.max_context = info.max_position_embeddings;
  state_->model.eos_token_ids = info.eos_token_ids;
  state_->engine = engine;
}

void HttpServer::SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->tokenizer = std::move(tokenizer);
  state_->model.tokenizer = state_->tokenizer.get();
}

void HttpServer::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->serving = serving;
}

void HttpServer::StartDrain() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->draining = true;
}

bool HttpServer::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(state_->mu);
  return state_->idle_cv.wait_for(lock, timeout, [this] { return state_->active == 0; });
}

int HttpServer::active_calls() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->active;
}

void HttpServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  state_->stopping = true;
  server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace glmserve
