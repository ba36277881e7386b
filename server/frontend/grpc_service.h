// The gRPC front end: glmserve.v1.Inference over an InferenceEngine, plus the standard health
// and reflection services. Callback API only; engine callbacks never block (per-call buffers are
// drained by the reactors, one outstanding write at a time).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "server/frontend/grpc_validation.h"
#include "server/ops/request_observer.h"

namespace grpc {
class Server;
}

namespace glmserve {

class InferenceServiceImpl;
class ApiKeys;      // server/request/auth.h
struct TlsConfig;   // server/request/auth.h
class ByteBudget;   // server/request/byte_budget.h
class ClientQuota;  // server/request/client_quota.h

// Transport and front-end limits. Defaults match `glmserve serve --help`; see proto/README.md for
// why the keepalive values differ from gRPC's.
struct GrpcServerOptions {
  std::string host = "127.0.0.1";
  int port = 50051;  // 0 = pick a free port (GrpcServer::port() says which)

  // Server sends a keepalive ping after this long without activity on a connection
  // (gRPC default: 2 h). Detects dead clients so their slots are freed.
  int keepalive_time_ms = 60'000;
  // Connection closed when a keepalive ping is not acknowledged within this (gRPC default: 20 s).
  int keepalive_timeout_ms = 20'000;
  // Clients may ping while no call is active (gRPC default: false).
  bool keepalive_permit_without_calls = true;
  // Minimum interval between client pings without data; faster pingers get GOAWAY
  // "too_many_pings" (gRPC default: 5 min).
  int min_ping_interval_ms = 10'000;
  // Concurrent streams per HTTP/2 connection (gRPC default: unlimited).
  int max_concurrent_streams = 256;
  // Memory gRPC's transport may hold, all connections together (requests arriving, responses
  // leaving); beyond it the transport stops reading until some is freed. 0 = unbounded (gRPC's
  // default).
  int64_t transport_memory_mb = 1024;
  // Largest request and response message (gRPC default: 4 MiB receive, unlimited send). A request
  // over it is INVALID_ARGUMENT (counted, logged); past twice it gRPC's own RESOURCE_EXHAUSTED.
  int max_message_bytes = 4 << 20;

  // Deadline applied to requests that carry none; 0 = none.
  int64_t default_deadline_ms = 600'000;
  FrontendLimits limits;
  bool log_requests = true;               // one stderr line per finished or rejected request
  int refused_log_lines_per_second = 20;  // RequestSessionsOptions' field of the same name
  // The gRPC server reflection service (what grpcurl and Postman list and describe). It exposes
  // only the public API's descriptors; a production deployment may turn it off.
  bool reflection = true;
  std::string build_version;
  // Sees every finished or refused call (metrics). Null = none.
  std::shared_ptr<RequestObserver> observer;

  // Security and fairness (server/request/auth.h, server/request/client_quota.h), shared with the HTTP front end.
  // Null = off: no key needed (else `authorization: Bearer KEY` metadata on Inference calls,
  // UNAUTHENTICATED without; health and reflection stay open), plaintext, no per-client cap.
  std::shared_ptr<const ApiKeys> api_keys;
  std::shared_ptr<const TlsConfig> tls;
  std::shared_ptr<ClientQuota> client_quota;
  // The cap on prompt text being tokenized at once (server/request/byte_budget.h), shared with the
  // other front end. Null = none.
  std::shared_ptr<ByteBudget> tokenize_budget;
};

class GrpcServer {
 public:
  // Binds and starts serving. Health is NOT_SERVING and Inference answers UNAVAILABLE until
  // SetEngine() and SetServing(true).
  static absl::StatusOr<std::unique_ptr<GrpcServer>> Start(const GrpcServerOptions& options);
  ~GrpcServer();

  int port() const { return port_; }
  std::string address() const;  // host:port actually bound

  // The engine must outlive every call (until Shutdown() returned). max_batch is reported in
  // ModelInfo.
  void SetEngine(InferenceEngine* engine, int32_t max_batch);
  // Enables prompt/messages/stop and response text. Call before SetServing(true); kept alive by
  // the server.
  void SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer);
  // A vision model's image decoding and preprocessing (server/request/media.h): image parts and
  // InferRequest.images are taken. Null or never called = text only. Before SetServing(true).
  void SetImageSupport(std::shared_ptr<const ImageSupport> images);
  // Health for "" and "glmserve.v1.Inference".
  void SetServing(bool serving);

  // Health NOT_SERVING, new requests UNAVAILABLE, engine StartDrain().
  void StartDrain();
  // Blocks until no Infer/InferStream call is active (responses delivered) or the timeout passes.
  bool WaitIdle(std::chrono::milliseconds timeout);
  // Finishes every call still waiting for the engine with UNAVAILABLE. Only after the engine's
  // Shutdown() (no more engine callbacks).
  void AbortAll();
  // grpc::Server::Shutdown with a deadline: calls still open after it are cancelled.
  void Shutdown(std::chrono::milliseconds grace);
  int active_calls() const;

 private:
  GrpcServer() = default;
  GrpcServerOptions options_;
  int port_ = 0;
  std::unique_ptr<InferenceServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

// One info log line on stderr (server/ops/logging.h): "glmserve: LINE" in text format, a JSON
// object with msg LINE in json format.
void LogLine(const std::string& line);

}  // namespace glmserve
