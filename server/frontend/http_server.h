// The HTTP/JSON front end (`serve --http-port P`): OpenAI-compatible /v1/chat/completions,
// /v1/completions (both with `stream: true` as server-sent events), /v1/models and /health, over
// the same InferenceEngine, limits, metrics and logs as gRPC. Library: Debian's cpp-httplib
// (libcpp-httplib-dev): maintained, packaged, chunked transfer for SSE, keep-alive, a bounded
// body size; blocking thread-per-connection, which suits a front end whose threads only parse,
// validate, enqueue and wait (the engine thread owns the model).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "server/ops/request_observer.h"
#include "server/request/request_validation.h"

namespace httplib {
class Server;
}

namespace glmserve {

class ApiKeys;      // server/request/auth.h
struct TlsConfig;   // server/request/auth.h
class ByteBudget;   // server/request/byte_budget.h
class ClientQuota;  // server/request/client_quota.h

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = pick a free port (HttpServer::port() says which)
  // API requests answered at once (each holds its connection's thread while it is answered or
  // streamed); more wait in a bounded queue (max_waiting), counted in glmserve_queue_depth.
  int threads = 64;
  // Requests waiting for one of `threads`; beyond: 429 at once (Retry-After).
  int max_waiting = 256;
  // Open connections (each has a thread of its own while open; idle keep-alive and slow ones
  // included); beyond: 503 at once and closed (over TLS after a handshake of at most 1 s on one of
  // 16 refusal threads; with those busy, closed unanswered). Below the usual fd limit with room
  // for gRPC.
  int max_connections = 512;
  // A request's head and body must arrive within this from its first byte (slow clients are cut
  // off: 408); an idle keep-alive connection is closed after idle_timeout_ms.
  int64_t read_timeout_ms = 10'000;
  int64_t idle_timeout_ms = 5'000;
  // Largest request body, chunked ones included (counted while reading); above: 413 (same
  // default as gRPC's --max-message-bytes).
  int64_t max_body_bytes = 4 << 20;
  // The cap on API request bodies held at once over all connections, from the head's arrival
  // (a Content-Length's worth at once, a chunked body as it arrives) for as long as the body is
  // kept (a unary answer's whole wait; a stream's until it starts): without it, up to max_connections bodies of
  // max_body_bytes each. A body that would pass it is refused with 429 + Retry-After and its connection closed (one
  // alone always passes). Null = none. serve: --http-body-budget-mb.
  std::shared_ptr<ByteBudget> body_budget;
  // Deadline for requests without a `timeout` (query or header); 0 = none.
  int64_t default_deadline_ms = 600'000;
  FrontendLimits limits;
  bool log_requests = true;
  int refused_log_lines_per_second = 20;  // RequestSessionsOptions' field of the same name
  // Sampling for requests that leave temperature / top_p / top_k out (serve: the checkpoint's
  // generation_config.json over OpenAI's defaults).
  SamplingDefaults sampling_defaults;
  std::string model_name = "glm";  // the id /v1/models lists when served_model_names is empty
  // The model ids requests may name (`model`; the first is what /v1/models lists first): another
  // is refused 404 model_not_found. Empty: model_name is listed and any id is taken (one model a
  // server). serve: --served-model-name.
  std::vector<std::string> served_model_names;
  std::shared_ptr<RequestObserver> observer;
  // Null = off. api_keys: /v1/* need `Authorization: Bearer KEY` (401 otherwise; /health stays
  // open). tls: HTTPS (OpenSSL, through the same connection loop, deadline and cap as HTTP; the
  // handshake counts against the first request's read deadline), mutual when it names a client CA.
  // client_quota: the per-client cap on queued plus running requests (429), shared with gRPC.
  std::shared_ptr<const ApiKeys> api_keys;
  std::shared_ptr<const TlsConfig> tls;
  std::shared_ptr<ClientQuota> client_quota;
  // The cap on prompt text being tokenized at once (server/request/byte_budget.h), shared with the
  // other front end. Null = none.
  std::shared_ptr<ByteBudget> tokenize_budget;
};

class HttpServer {
 public:
  // Binds and starts the listener thread. /health answers 503 and the API 503 until SetEngine()
  // and SetServing(true).
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpServerOptions& options);
  ~HttpServer();

  int port() const { return port_; }
  std::string address() const;

  void SetEngine(InferenceEngine* engine);  // must outlive Shutdown()
  void SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer);
  // A vision model's images (server/request/media.h): image_url parts are taken. Null or never
  // called = text only.
  void SetImageSupport(std::shared_ptr<const ImageSupport> images);
  void SetServing(bool serving);
  // New requests 503 (draining); in-flight ones finish.
  void StartDrain();
  bool WaitIdle(std::chrono::milliseconds timeout);
  int active_calls() const;
  // API requests waiting for a serving slot (added to glmserve_queue_depth).
  int waiting_requests() const;
  // Calls still waiting answer 503; the listener stops and is joined. After the engine's
  // Shutdown().
  void Shutdown();

  struct State;  // shared with handlers and engine callbacks

 private:
  HttpServer() = default;
  std::shared_ptr<State> state_;
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
  int port_ = 0;
  bool shut_down_ = false;
};

}  // namespace glmserve
