#include "server/frontend/grpc_service.h"

#include <grpc/support/time.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "glmserve/v1/inference.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/ops/logging.h"
#include "server/ops/port_probe.h"
#include "server/request/auth.h"
#include "server/request/client_quota.h"
#include "server/request/request.h"
#include "server/request/request_session.h"

namespace glmserve {

namespace {

constexpr char kServiceName[] = "glmserve.v1.Inference";
constexpr char kRequestIdMetadata[] = "glmserve-request-id";
// gRFC A6's server pushback: a client retrying under a service-config retry policy waits this
// many milliseconds before its next attempt instead of its own randomised backoff.
constexpr char kRetryPushbackMetadata[] = "grpc-retry-pushback-ms";

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

void FillFinal(const RequestResult& result, const std::vector<ImageUsage>& images, size_t already_sent,
               v1::InferResponse* out) {
  for (size_t i = already_sent; i < result.output_ids.size(); ++i) {
    out->add_output_ids(result.output_ids[i]);
  }
  out->set_finish_reason(ToProtoFinishReason(result.finish_reason));
  const int32_t completion = static_cast<int32_t>(result.output_ids.size());
  out->mutable_usage()->set_prompt_tokens(result.prompt_tokens);
  out->mutable_usage()->set_completion_tokens(completion);
  out->mutable_usage()->set_total_tokens(result.prompt_tokens + completion);
  out->mutable_usage()->set_cached_prompt_tokens(result.cached_prompt_tokens);
  int32_t image_tokens = 0;
  for (const ImageUsage& image : images) {
    v1::ImageUsage* u = out->mutable_usage()->add_images();
    u->set_height(image.height);
    u->set_width(image.width);
    u->set_tokens(image.tokens);
    image_tokens += image.tokens;
  }
  out->mutable_usage()->set_image_tokens(image_tokens);
  out->set_queue_ms(result.queue_ms);
  out->set_ttft_ms(result.ttft_ms);
  out->set_total_ms(result.total_ms);
}

}  // namespace

void LogLine(const std::string& line) { LogEvent(LogLevel::kInfo, "log", "", line); }

namespace {

// The trace id when the request carries no request_id: x-request-id, else the trace-id of a W3C
// traceparent ("00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>"). Empty when neither.
std::string TraceIdFromMetadata(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("x-request-id");
  if (it != md.end() && !it->second.empty()) return std::string(it->second.data(), it->second.size());
  it = md.find("traceparent");
  if (it != md.end()) {
    const std::string tp(it->second.data(), it->second.size());
    if (tp.size() >= 55 && tp[2] == '-' && tp[35] == '-') return tp.substr(3, 32);
  }
  return "";
}

// --api-key-file / GLMSERVE_API_KEY: `authorization: Bearer KEY` metadata, else UNAUTHENTICATED.
// *client: the caller for --max-requests-per-client: its key ("key#N") when keys are on, else its
// peer address without the port. The key is never logged or echoed.
grpc::Status Authenticate(const grpc::CallbackServerContext* ctx, const GrpcServerOptions& options,
                          std::string* client) {
  if (options.api_keys == nullptr) {
    *client = ClientFromGrpcPeer(ctx->peer());
    return grpc::Status::OK;
  }
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::UNAUTHENTICATED, "missing 'authorization: Bearer KEY' metadata (an API key is required)");
  }
  std::optional<std::string> who = options.api_keys->Check(std::string_view(it->second.data(), it->second.size()));
  if (!who) return grpc::Status(grpc::UNAUTHENTICATED, "invalid API key");
  *client = std::move(*who);
  return grpc::Status::OK;
}

}  // namespace

namespace {

// Malformed protobuf: gRPC's callback handlers answer a request whose bytes do not parse as the
// method's message UNIMPLEMENTED with an empty message, without calling the service. The guard
// wraps the generated handler (the method stays typed, so the proto contract and reflection are
// unchanged): on a parse failure it runs the handler as if the parse had succeeded, with
// t_malformed set for the reactor getter (called synchronously inside RunHandler), which then
// answers INVALID_ARGUMENT with a message instead of calling the method.
thread_local const grpc::Status* t_malformed = nullptr;

class MalformedRequestGuard final : public grpc::internal::MethodHandler {
 public:
  MalformedRequestGuard(grpc::internal::MethodHandler* inner, std::string message_type)
      : inner_(inner), message_type_(std::move(message_type)) {}

  void RunHandler(const HandlerParameter& param) override {
    if (param.status.ok()) return inner_->RunHandler(param);
    std::string detail = param.status.error_message();
    // CANCELLED: Deserialize's "no message arrived" passes through as is.
    const grpc::Status malformed =
        param.status.error_code() == grpc::CANCELLED
            ? param.status
            : grpc::Status(grpc::INVALID_ARGUMENT,
                           absl::StrCat("malformed request: the body is not a valid protobuf ", message_type_,
                                        detail.empty() ? "" : absl::StrCat(" (", detail, ")")));
    t_malformed = &malformed;
    inner_->RunHandler(HandlerParameter(param.call, param.server_context, param.request, grpc::Status::OK,
                                        param.internal_data, param.call_requester));
    t_malformed = nullptr;
  }
  void* Deserialize(grpc_call* call, grpc_byte_buffer* req, grpc::Status* status, void** handler_data) override {
    // No message at all: the call was reset or timed out before its request arrived (no stub
    // sends a unary call without one), which the server may see before gRPC marks it cancelled.
    // The inner handler still runs: it sets up `handler_data` (its message holder) either way.
    void* request = inner_->Deserialize(call, req, status, handler_data);
    if (req == nullptr && !status->ok())
      *status = grpc::Status(grpc::CANCELLED, "the call ended before its request arrived");
    return request;
  }

 private:
  std::unique_ptr<grpc::internal::MethodHandler> inner_;
  const std::string message_type_;
};

// The stream's answer to a malformed request: no message, just the status.
class FinishOnlyWriteReactor final : public grpc::ServerWriteReactor<v1::InferResponse> {
 public:
  explicit FinishOnlyWriteReactor(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// What a cancelled call's end means: gRPC cancels a call itself when its deadline passes, as it
// does when the client cancels; at the deadline it is counted DEADLINE_EXCEEDED, as the client sees
// it. The client's timer fires before the server's copy of the deadline (the latter is later by the
// request's transit) and gRPC's timers and clocks differ a little: a cancel within kDeadlineSlackMs
// before the deadline is the deadline's. gRPC's own timespec: deadline()'s nanoseconds wrap for
// deadlines past 2262 (EngineDeadline).
absl::StatusCode TransportCancelCode(const grpc::ServerContextBase& ctx) {
  constexpr int64_t kDeadlineSlackMs = 50;
  const gpr_timespec deadline = ctx.raw_deadline();
  const gpr_timespec soon =
      gpr_time_add(gpr_now(deadline.clock_type), gpr_time_from_millis(kDeadlineSlackMs, GPR_TIMESPAN));
  return gpr_time_cmp(deadline, soon) <= 0 ? absl::StatusCode::kDeadlineExceeded : absl::StatusCode::kCancelled;
}

// The answer to a malformed request: UNAUTHENTICATED first when keys are on and the caller has
// none (as for a well-formed one), else INVALID_ARGUMENT (logged at warn).
grpc::Status AnswerMalformed(grpc::CallbackServerContext* ctx, const GrpcServerOptions& options, const char* method,
                             const std::string& request_id) {
  // Every call's status carries its request id (the metadata's trace id, else a new one).
  ctx->AddTrailingMetadata(kRequestIdMetadata, request_id);
  std::string client;
  const bool counted = std::string_view(method) != "GetModelInfo";  // as well-formed calls are
  // No body because the call ended before it arrived (its deadline passed, the client cancelled):
  // gRPC still runs the handler, with a deserialization error. Not the request's fault.
  const gpr_timespec deadline = ctx->raw_deadline();
  const bool past = gpr_time_cmp(deadline, gpr_now(deadline.clock_type)) <= 0;
  if (past || ctx->IsCancelled() || t_malformed->error_code() == grpc::CANCELLED) {
    const absl::StatusCode code = TransportCancelCode(*ctx);
    const bool late = code == absl::StatusCode::kDeadlineExceeded;
    if (counted && options.observer != nullptr) options.observer->OnRequestFinished(CodeName(code), nullptr);
    LogEvent(LogLevel::kDebug, "request_ended_unread", request_id,
             absl::StrCat(method, ": the call ended before its request arrived"),
             {{"method", method}, {"peer", ctx->peer()}, {"code", CodeName(code)}});
    return late ? grpc::Status(grpc::DEADLINE_EXCEEDED, "the deadline passed before the request arrived")
                : grpc::Status(grpc::CANCELLED, "the call ended before its request arrived");
  }
  if (grpc::Status denied = Authenticate(ctx, options, &client); !denied.ok()) {
    if (counted && options.observer != nullptr) {
      options.observer->OnRequestFinished(CodeName(absl::StatusCode::kUnauthenticated), nullptr);
    }
    return denied;
  }
  if (counted && options.observer != nullptr) {
    options.observer->OnRequestFinished(CodeName(absl::StatusCode::kInvalidArgument), nullptr);
  }
  LogEvent(LogLevel::kWarn, "request_malformed", request_id, absl::StrCat(method, ": ", t_malformed->error_message()),
           {{"method", method}, {"peer", ctx->peer()}, {"code", "INVALID_ARGUMENT"}});
  return *t_malformed;
}

// gRPC's and protobuf's own diagnostics (e.g. protobuf's "String field ... contains invalid UTF-8"
// on a malformed request) go through the JSON/text logger instead of raw lines on stderr.
void RouteLibraryLogs() {
  static std::once_flag once;
  std::call_once(once, [] {
    // gRPC's errors at warn: the ones that stop the server (a port in use: "No address added
    // out of total 1 resolved") are reported once more by serve, at error, naming the flag.
    gpr_set_log_function([](gpr_log_func_args* args) {
      const LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR  ? LogLevel::kWarn
                             : args->severity == GPR_LOG_SEVERITY_INFO ? LogLevel::kInfo
                                                                       : LogLevel::kDebug;
      LogEvent(level, "grpc_library", "", args->message != nullptr ? args->message : "",
               {{"file", args->file != nullptr ? args->file : ""}, {"line", args->line}});
    });
    google::protobuf::SetLogHandler(
        [](google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
          // A client's bad bytes ("String field ... contains invalid UTF-8") are no server error.
          const LogLevel l = level >= google::protobuf::LOGLEVEL_FATAL     ? LogLevel::kError
                             : level >= google::protobuf::LOGLEVEL_WARNING ? LogLevel::kWarn
                                                                           : LogLevel::kInfo;
          LogEvent(l, "protobuf_library", "", message, {{"file", file != nullptr ? file : ""}, {"line", line}});
        });
  });
}

}  // namespace

class CallBase;

class InferenceServiceImpl final : public v1::Inference::CallbackService {
 public:
  explicit InferenceServiceImpl(const GrpcServerOptions& options)
      : options_(options), sessions_(SessionsOptionsOf(options, "glm")) {
    GuardAgainstMalformedRequests();
  }

  grpc::ServerUnaryReactor* Infer(grpc::CallbackServerContext* ctx, const v1::InferRequest* request,
                                  v1::InferResponse* response) override;
  grpc::ServerWriteReactor<v1::InferResponse>* InferStream(grpc::CallbackServerContext* ctx,
                                                           const v1::InferRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  void SetEngine(InferenceEngine* engine, int32_t max_batch) {
    const ModelInfo& info = engine->model_info();
    auto proto = std::make_shared<v1::ModelInfo>();
    proto->set_architecture(info.architecture);
    proto->set_source_format(info.source_format);
    proto->set_parameter_count(info.parameter_count);
    proto->set_dtype(info.compute_dtype);
    proto->set_stored_dtype(info.stored_dtype);
    proto->set_device(info.device);
    proto->set_vocab_size(info.vocab_size);
    proto->set_max_context(info.max_context());  // the KV pool's capacity where it holds fewer tokens
    for (int32_t id : info.eos_token_ids) proto->add_eos_token_ids(id);
    proto->set_max_batch(max_batch);
    proto->set_build_version(options_.build_version);
    proto->set_max_new_tokens_cap(options_.limits.max_new_tokens_cap);
    proto->set_default_max_new_tokens(options_.limits.default_max_new_tokens);
    sessions_.SetEngine(engine);
    std::lock_guard<std::mutex> lock(mu_);
    model_info_ = std::move(proto);
    engine_ = engine;
  }

  void SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer) {
    sessions_.SetTokenizer(std::move(tokenizer));
  }
  void SetImageSupport(std::shared_ptr<const ImageSupport> images) { sessions_.SetImageSupport(std::move(images)); }

  void StartDrain() {
    InferenceEngine* engine = nullptr;
    sessions_.StartDrain();
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine = engine_;
    }
    if (engine != nullptr) engine->StartDrain();
  }

  void CallStarted() {
    std::lock_guard<std::mutex> lock(mu_);
    ++active_calls_;
  }
  void CallDone() {
    std::lock_guard<std::mutex> lock(mu_);
    --active_calls_;
    if (active_calls_ == 0) idle_cv_.notify_all();
  }
  bool WaitIdle(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, timeout, [this] { return active_calls_ == 0; });
  }
  int active_calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return active_calls_;
  }
  void AbortAll() { sessions_.AbortAll(); }

  const GrpcServerOptions& options() const { return options_; }
  RequestSessions& sessions() { return sessions_; }

  // A malformed request's id: the metadata's trace id where valid, else a new one.
  std::string MalformedRequestId(const grpc::CallbackServerContext* ctx) {
    std::string id = TraceIdFromMetadata(ctx);
    if (id.empty() || CheckRequestId(id, options_.limits, Dialect::kProto)) id = sessions_.NewRequestId();
    return id;
  }

  // Deadline for the engine: the call's deadline, else the default one.
  std::chrono::steady_clock::time_point EngineDeadline(const grpc::CallbackServerContext* ctx) const {
    // From gRPC's own timespec: ServerContext::deadline() converts it to system_clock nanoseconds,
    // which wrap for deadlines past 2262 (grpc-go sends `2562047H`, ~292 years, for no deadline),
    // and the call then failed at once as past its deadline.
    const gpr_timespec raw = ctx->raw_deadline();
    const auto steady_now = std::chrono::steady_clock::now();
    if (gpr_time_cmp(raw, gpr_inf_future(raw.clock_type)) != 0) {
      const gpr_timespec left = gpr_time_sub(raw, gpr_now(raw.clock_type));
      constexpr int64_t kFarSeconds = int64_t{100} * 365 * 24 * 3600;  // as good as none
      if (left.tv_sec >= kFarSeconds) return steady_now + std::chrono::seconds(kFarSeconds);
      return steady_now + std::chrono::seconds(left.tv_sec) + std::chrono::nanoseconds(left.tv_nsec);
    }
    if (options_.default_deadline_ms > 0) {
      return steady_now + std::chrono::milliseconds(options_.default_deadline_ms);
    }
    return std::chrono::steady_clock::time_point::max();
  }

 private:
  const GrpcServerOptions options_;
  RequestSessions sessions_;
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  InferenceEngine* engine_ = nullptr;          // guarded by mu_
  std::shared_ptr<v1::ModelInfo> model_info_;  // guarded by mu_
  int active_calls_ = 0;                       // guarded by mu_

  // Replaces the generated handlers by the same ones behind MalformedRequestGuard.
  void GuardAgainstMalformedRequests();
};

// A call's gRPC half over a RequestSession (server/request/request_session.h), which admits, validates,
// submits, decodes text, logs and counts; this class only translates to the proto and the
// reactor. The reactor owns itself through self_ (released in OnDone); the session holds it as its
// sink until the result was delivered, and the reactor is finished only after that (or after the
// engine was shut down: AbortAll).
class CallBase : public SessionSink, public std::enable_shared_from_this<CallBase> {
 public:
  CallBase(InferenceServiceImpl* service, grpc::CallbackServerContext* ctx, const char* rpc)
      : service_(service), ctx_(ctx), rpc_(rpc) {
    service_->CallStarted();
  }
  ~CallBase() override = default;

  // Admits, validates and submits; on refusal the call is finished at once.
  void Begin(const v1::InferRequest& proto_request) {
    const auto received = std::chrono::steady_clock::now();
    RequestSessions& sessions = service_->sessions();
    request_id_ = proto_request.request_id();
    std::optional<Refusal> bad_id = CheckRequestId(request_id_, service_->options().limits, Dialect::kProto);
    if (request_id_.empty()) {  // a trace id from metadata is used only when it is valid
      request_id_ = TraceIdFromMetadata(ctx_);
      if (CheckRequestId(request_id_, service_->options().limits, Dialect::kProto)) request_id_.clear();
    }
    if (request_id_.empty() || bad_id) request_id_ = sessions.NewRequestId();
    // The request id goes into the initial metadata only with a response (UnaryCall::OnResult,
    // StreamCall::Pump): a refusal stays trailers-only, which a client's retry policy may retry;
    // a response's headers commit the call.
    if (bad_id) return Refuse(*bad_id);
    // Over --max-message-bytes (gRPC itself refuses only past twice it, below): INVALID_ARGUMENT,
    // counted and logged, where gRPC's RESOURCE_EXHAUSTED is neither and is retried by clients.
    if (const size_t bytes = proto_request.ByteSizeLong();
        bytes > static_cast<size_t>(service_->options().max_message_bytes)) {
      return Refuse(MakeRefusal(absl::StatusCode::kInvalidArgument, RefusalKind::kPayloadTooLarge,
                                absl::StrCat("request of ", bytes, " bytes; at most ",
                                             service_->options().max_message_bytes, " (--max-message-bytes)")));
    }
    if (grpc::Status denied = Authenticate(ctx_, service_->options(), &client_); !denied.ok()) {
      return Refuse(
          MakeRefusal(absl::StatusCode::kUnauthenticated, RefusalKind::kUnauthenticated, denied.error_message()));
    }
    Admission admission;
    std::optional<Refusal> refusal = sessions.Admit(client_, &admission);
    {
      std::lock_guard<std::mutex> lock(quota_mu_);
      quota_ = std::move(admission.quota);
    }
    if (refusal) return Refuse(*refusal);
    GenerateRequest typed;
    if (auto invalid = FromProto(proto_request, &typed)) return Refuse(*invalid);
    typed.deadline = service_->EngineDeadline(ctx_);
    SessionInfo info;
    info.request_id = request_id_;
    info.rpc = rpc_;
    info.streaming = streaming();
    info.received = received;
    InferenceRequest request;
    // Images stop being decoded once the call is cancelled (or at typed.deadline), not after all of
    // them: a call with a 0.2 s deadline carrying seven 49 M-pixel PNGs cost 7 s of CPU.
    grpc::CallbackServerContext* const ctx = ctx_;
    if (auto invalid = sessions.Validate(typed, Dialect::kProto, admission, info, &request,
                                         [ctx] { return ctx->IsCancelled(); })) {
      return Refuse(*invalid);
    }
    if (ctx_->IsCancelled()) {
      return Refuse(
          TransportCancelCode(*ctx_) == absl::StatusCode::kDeadlineExceeded
              ? MakeRefusal(absl::StatusCode::kDeadlineExceeded, RefusalKind::kDeadline,
                            "the call's deadline passed before the request was queued")
              : MakeRefusal(absl::StatusCode::kCancelled, RefusalKind::kCancelled, "cancelled by the client"));
    }
    images_ = ImageUsages(request.multimodal.get());  // before the engine owns the request
    std::shared_ptr<RequestSession> session;
    if (auto refused =
            sessions.Submit(admission, std::move(request), std::move(info), typed.stop, shared_from_this(), &session)) {
      return Refuse(*refused);  // RESOURCE_EXHAUSTED keeps the engine's retry hint in its message
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      session_ = std::move(session);
    }
    if (ctx_->IsCancelled()) CancelInEngine();
  }

  void CheckDone() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!engine_done_) LogLine(absl::StrCat("request_id=", request_id_, " BUG: OnDone before the engine finished"));
  }

  // SessionSink: the session's delivery worker.
  void OnFinish(const RequestResult& result, const std::string& tail, const std::string& text) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (engine_done_) return;
      result_ = result;
      tail_ = tail;
      text_ = text;
      engine_done_ = true;
    }
    // The engine's work is done: the client's --max-requests-per-client slot frees now, not when
    // the call ends (a stream whose client reads nothing held it until its deadline).
    ReleaseQuota();
    OnResult();
  }

 protected:
  virtual bool streaming() const = 0;
  // Finishes (or starts finishing) the RPC; called once.
  virtual void FinishWith(const grpc::Status& status) = 0;
  virtual void OnResult() = 0;  // engine_done_ was just set

  void Refuse(const Refusal& refusal) {
    ReleaseQuota();
    if (refusal.retry_after_ms > 0 &&
        (refusal.code == absl::StatusCode::kUnavailable || refusal.code == absl::StatusCode::kResourceExhausted)) {
      ctx_->AddTrailingMetadata(kRetryPushbackMetadata, std::to_string(refusal.retry_after_ms));
    }
    service_->sessions().Refused(request_id_, rpc_, refusal,
                                 {{"client", client_.empty() ? ClientFromGrpcPeer(ctx_->peer()) : client_}});
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_done_ = true;
    }
    FinishWith(ToGrpc(refusal.ToStatus()));
  }

  // Client went away or cancelled: free the engine slot. Never under mu_.
  // `why`: CANCELLED (the client cancelled or went away), or DEADLINE_EXCEEDED where gRPC cancelled
  // the call at its deadline (TransportCancelCode).
  void CancelInEngine(absl::StatusCode why = absl::StatusCode::kCancelled) {
    std::shared_ptr<RequestSession> session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!engine_done_) session = session_;
    }
    if (session != nullptr) session->Cancel(why);
  }

  InferenceServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  const char* const rpc_;
  std::string request_id_;
  std::string client_;              // the API key's name once authenticated, else the peer address: refusals' logs
  std::vector<ImageUsage> images_;  // set in Begin, before the session can call back

  std::mutex mu_;
  std::shared_ptr<RequestSession> session_;  // guarded by mu_; set once submitted
  bool engine_done_ = false;                 // guarded by mu_
  RequestResult result_;                     // guarded by mu_; valid once engine_done_
  std::string tail_;                         // guarded by mu_; text not yet streamed
  std::string text_;                         // guarded by mu_; the whole text
  std::shared_ptr<CallBase> self_;
  // This call's place under --max-requests-per-client: released before the final status goes out
  // (a client that sends its next request on the answer finds it free), or on OnDone.
  ClientQuota::Lease quota_;
  std::mutex quota_mu_;
  void ReleaseQuota() {
    std::lock_guard<std::mutex> lock(quota_mu_);
    quota_.Release();
  }
};

class UnaryCall final : public CallBase, public grpc::ServerUnaryReactor {
 public:
  UnaryCall(InferenceServiceImpl* service, grpc::CallbackServerContext* ctx, v1::InferResponse* response)
      : CallBase(service, ctx, "Infer"), response_(response) {}

  static grpc::ServerUnaryReactor* Create(InferenceServiceImpl* service, grpc::CallbackServerContext* ctx,
                                          const v1::InferRequest* request, v1::InferResponse* response) {
    auto call = std::make_shared<UnaryCall>(service, ctx, response);
    call->self_ = call;
    call->Begin(*request);
    return call.get();
  }

  void OnCancel() override { CancelInEngine(TransportCancelCode(*ctx_)); }
  void OnDone() override {
    CheckDone();
    ReleaseQuota();
    service_->CallDone();
    self_.reset();  // deletes this unless the session still holds it
  }
  void OnStep(const std::vector<int32_t>&, const std::string&) override {}

 protected:
  bool streaming() const override { return false; }
  void FinishWith(const grpc::Status& status) override {
    ctx_->AddTrailingMetadata(kRequestIdMetadata, request_id_);
    ReleaseQuota();
    Finish(status);
  }
  void OnResult() override {
    if (!result_.status.ok()) return FinishWith(ToGrpc(result_.status));
    ctx_->AddInitialMetadata(kRequestIdMetadata, request_id_);
    response_->set_request_id(request_id_);
    FillFinal(result_, images_, 0, response_);
    response_->set_text(text_);
    FinishWith(grpc::Status::OK);
  }

 private:
  v1::InferResponse* const response_;
};

class StreamCall final : public CallBase, public grpc::ServerWriteReactor<v1::InferResponse> {
 public:
  StreamCall(InferenceServiceImpl* service, grpc::CallbackServerContext* ctx) : CallBase(service, ctx, "InferStream") {}

  static grpc::ServerWriteReactor<v1::InferResponse>* Create(InferenceServiceImpl* service,
                                                             grpc::CallbackServerContext* ctx,
                                                             const v1::InferRequest* request) {
    auto call = std::make_shared<StreamCall>(service, ctx);
    call->self_ = call;
    call->Begin(*request);
    return call.get();
  }

  void OnWriteDone(bool ok) override {
    bool cancel = false;
    std::shared_ptr<RequestSession> delivered;  // its result's last message went out: counted now
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (final_in_flight_) {
        final_in_flight_ = false;
        final_written_ = ok;
        if (ok && finished_log_owed_) {
          finished_log_owed_ = false;
          delivered = session_;
        }
      }
      if (!ok) {
        broken_ = true;
        pending_.clear();
        cancel = true;
      }
    }
    if (delivered != nullptr) delivered->LogDeferredFinish(std::nullopt);
    if (cancel)
      CancelInEngine(TransportCancelCode(*ctx_));  // a write fails when the call ended: its deadline, or the client
    Pump();
  }
  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      pending_.clear();
    }
    CancelInEngine(TransportCancelCode(*ctx_));
    Pump();
  }
  void OnDone() override {
    CheckDone();
    ReleaseQuota();
    std::shared_ptr<RequestSession> owed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_log_owed_) owed = session_;
      finished_log_owed_ = false;
    }
    // Still owed: the result's last message never went out (the call ended first: its deadline,
    // or the client).
    if (owed != nullptr) owed->LogDeferredFinish(TransportCancelCode(*ctx_));
    service_->CallDone();
    self_.reset();
  }
  // A result that ended well is counted when its last message is written (OnWriteDone), before
  // the status follows it: a reading client's write completes at once, one that does not read
  // holds it behind HTTP/2's window until the call ends, and is counted then as it ended (OnDone).
  bool TakesFinishedLog(const RequestResult& result) override {
    std::lock_guard<std::mutex> lock(mu_);
    finished_log_owed_ = result.status.ok() && !broken_;
    return finished_log_owed_;
  }
  void OnStep(const std::vector<int32_t>& ids, const std::string& text) override {
    if (ids.empty()) return;
    bool stuck = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_ || finished_) return;
      // A client that reads nothing (its HTTP/2 window full) holds the write in flight: its steps
      // piled up here (~1 KB a token) and the engine kept generating for it until the deadline
      // (10 minutes by default). Past kStuckWriteTimeout, as HTTP's write timeout, the generation
      // stops and what is held goes; the call ends CANCELLED when the write ends.
      if (writing_ && std::chrono::steady_clock::now() - write_started_ > kStuckWriteTimeout) {
        stuck = stuck_ = broken_ = true;
        pending_.clear();
        pending_text_.clear();
      } else {
        pending_.push_back(ids);
        pending_text_.push_back(text);
        streamed_ += ids.size();
      }
    }
    if (stuck) {
      LogEvent(LogLevel::kInfo, "stream_unread", request_id_, absl::StrCat("InferStream: ", UnreadMessage()));
      CancelInEngine(absl::StatusCode::kCancelled);
    }
    Pump();
  }

 protected:
  bool streaming() const override { return true; }
  void FinishWith(const grpc::Status& status) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
      error_ = status;
    }
    Pump(/*force_error=*/true);
  }
  void OnResult() override { Pump(); }

 private:
  // Starts the next write, or the finish once everything is written. One write at a time;
  // decisions under mu_, gRPC calls outside it.
  void Pump(bool force_error = false) {
    enum { kNothing, kWrite, kFinish } action = kNothing;
    grpc::Status status;
    bool first_write = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (writing_ || final_started_) return;
      if (force_error) {
        action = kFinish;
        status = error_;
      } else if (broken_) {
        if (!engine_done_) return;  // wait for the engine to let go of the request
        action = kFinish;
        status = grpc::Status(grpc::CANCELLED, stuck_ ? UnreadMessage() : "cancelled by the client");
      } else if (!pending_.empty()) {
        out_.Clear();
        out_.set_request_id(request_id_);
        for (int32_t id : pending_.front()) out_.add_output_ids(id);
        pending_.pop_front();
        if (!pending_text_.empty()) {
          out_.set_text(pending_text_.front());
          pending_text_.pop_front();
        }
        writing_ = true;
        write_started_ = std::chrono::steady_clock::now();
        action = kWrite;
      } else if (engine_done_) {
        // A stream cut short after its first message (its deadline, a model failure, an engine
        // fault) still gets the last message, with the finish reason and usage, before the status:
        // the client learns what it used. Before any message the status goes alone, so that a retry
        // policy may still retry the call (a response commits it).
        const bool last_message = result_.status.ok() || wrote_;
        if (!last_message || final_written_) {
          action = kFinish;
          status = result_.status.ok() ? grpc::Status::OK : ToGrpc(result_.status);
        } else {  // the last message, then (once written) the status
          out_.Clear();
          out_.set_request_id(request_id_);
          FillFinal(result_, images_, streamed_, &out_);
          out_.set_text(tail_);
          writing_ = final_in_flight_ = true;
          write_started_ = std::chrono::steady_clock::now();
          action = kWrite;
        }
      }
      if (action == kFinish) {
        final_started_ = true;
        finished_ = true;
      }
      if (action == kWrite && !wrote_) first_write = wrote_ = true;
    }
    // The request id's initial metadata goes out with the first response (see Begin).
    if (first_write) ctx_->AddInitialMetadata(kRequestIdMetadata, request_id_);
    if (action == kFinish) ReleaseQuota();
    switch (action) {
      case kNothing:
        break;
      case kWrite:
        StartWrite(&out_);
        break;
      case kFinish:
        ctx_->AddTrailingMetadata(kRequestIdMetadata, request_id_);
        Finish(status);
        break;
    }
  }

  // How long one write may wait on a client that reads nothing while the engine generates for it.
  static constexpr std::chrono::seconds kStuckWriteTimeout{10};
  // Why such a call ended: its log line and its status say the same.
  static std::string UnreadMessage() {
    return absl::StrCat("the client read no response for ", kStuckWriteTimeout.count(),
                        " s (its HTTP/2 window is full): generation cancelled");
  }

  // Guarded by mu_.
  std::chrono::steady_clock::time_point write_started_;  // of the write in flight (writing_)
  bool stuck_ = false;                                   // cancelled for a write stuck past the timeout
  std::deque<std::vector<int32_t>> pending_;
  std::deque<std::string> pending_text_;  // text of each pending_ entry (with a tokenizer)
  size_t streamed_ = 0;
  bool writing_ = false;
  bool broken_ = false;
  bool finished_ = false;
  bool final_started_ = false;
  bool wrote_ = false;              // a response was written (or is being): the initial metadata went with it
  bool finished_log_owed_ = false;  // TakesFinishedLog said yes: the last message's write or OnDone reports it
  bool final_in_flight_ = false;    // the write in flight is the result's last message
  bool final_written_ = false;      // it was written: the status follows
  grpc::Status error_;
  v1::InferResponse out_;  // the one outstanding write
};

grpc::ServerUnaryReactor* InferenceServiceImpl::Infer(grpc::CallbackServerContext* ctx, const v1::InferRequest* request,
                                                      v1::InferResponse* response) {
  return UnaryCall::Create(this, ctx, request, response);
}

grpc::ServerWriteReactor<v1::InferResponse>* InferenceServiceImpl::InferStream(grpc::CallbackServerContext* ctx,
                                                                               const v1::InferRequest* request) {
  return StreamCall::Create(this, ctx, request);
}

grpc::ServerUnaryReactor* InferenceServiceImpl::GetModelInfo(grpc::CallbackServerContext* ctx,
                                                             const v1::GetModelInfoRequest*, v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  std::string client;
  if (grpc::Status denied = Authenticate(ctx, options_, &client); !denied.ok()) {
    reactor->Finish(denied);
    return reactor;
  }
  std::shared_ptr<v1::ModelInfo> info;
  {
    std::lock_guard<std::mutex> lock(mu_);
    info = model_info_;
  }
  if (info == nullptr) {
    reactor->Finish(grpc::Status(grpc::UNAVAILABLE, "model is loading; retry later"));
  } else {
    *response = *info;
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

void InferenceServiceImpl::GuardAgainstMalformedRequests() {
  // Method indices as in the generated CallbackService (the proto's order).
  MarkMethodCallback(0, new MalformedRequestGuard(
                            new grpc::internal::CallbackUnaryHandler<v1::InferRequest, v1::InferResponse>(
                                [this](grpc::CallbackServerContext* ctx, const v1::InferRequest* request,
                                       v1::InferResponse* response) -> grpc::ServerUnaryReactor* {
                                  if (t_malformed == nullptr) return Infer(ctx, request, response);
                                  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
                                  reactor->Finish(AnswerMalformed(ctx, options_, "Infer", MalformedRequestId(ctx)));
                                  return reactor;
                                }),
                            v1::InferRequest::descriptor()->full_name()));
  MarkMethodCallback(1,
                     new MalformedRequestGuard(
                         new grpc::internal::CallbackServerStreamingHandler<v1::InferRequest, v1::InferResponse>(
                             [this](grpc::CallbackServerContext* ctx,
                                    const v1::InferRequest* request) -> grpc::ServerWriteReactor<v1::InferResponse>* {
                               if (t_malformed == nullptr) return InferStream(ctx, request);
                               return new FinishOnlyWriteReactor(
                                   AnswerMalformed(ctx, options_, "InferStream", MalformedRequestId(ctx)));
                             }),
                         v1::InferRequest::descriptor()->full_name()));
  MarkMethodCallback(
      2, new MalformedRequestGuard(new grpc::internal::CallbackUnaryHandler<v1::GetModelInfoRequest, v1::ModelInfo>(
                                       [this](grpc::CallbackServerContext* ctx, const v1::GetModelInfoRequest* request,
                                              v1::ModelInfo* response) -> grpc::ServerUnaryReactor* {
                                         if (t_malformed == nullptr) return GetModelInfo(ctx, request, response);
                                         grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
                                         reactor->Finish(
                                             AnswerMalformed(ctx, options_, "GetModelInfo", MalformedRequestId(ctx)));
                                         return reactor;
                                       }),
                                   v1::GetModelInfoRequest::descriptor()->full_name()));
}

// ---------------------------------------------------------------------------------------------

namespace {

// Takes the reflection plugin out of one builder: linking grpc++_reflection registers it for every
// builder of the process (a static initializer), so not calling InitProtoReflectionServerBuilderPlugin
// is not enough to turn reflection off.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const std::unique_ptr<grpc::ServerBuilderPlugin>& plugin) {
                                    return plugin->name() == "proto_server_reflection";
                                  }),
                   plugins->end());
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> GrpcServer::Start(const GrpcServerOptions& options) {
  if (options.port < 0 || options.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port: ", options.port, " is outside [0, 65535]"));
  }
  std::unique_ptr<GrpcServer> server(new GrpcServer());
  server->options_ = options;
  server->service_ = std::make_unique<InferenceServiceImpl>(options);

  RouteLibraryLogs();
  grpc::EnableDefaultHealthCheckService(true);
  // Reflection describes grpc.health.v1.Health from its descriptors (proto/grpc/health/v1): naming
  // one here keeps the linker from dropping them from the static library.
  (void)grpc::health::v1::HealthCheckResponse::descriptor();
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.tls != nullptr) {  // --tls-cert/--tls-key; --tls-client-ca: clients must present a cert it signed
    grpc::SslServerCredentialsOptions ssl(options.tls->mutual()
                                              ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                              : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    ssl.pem_root_certs = options.tls->client_ca_pem;
    ssl.pem_key_cert_pairs.push_back({options.tls->key_pem, options.tls->cert_pem});
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(FormatAddress(options.host, options.port), credentials, &server->port_);
  if (!options.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  builder.RegisterService(server->service_.get());
  // Twice the limit, so that a request over it reaches CallBase::Begin and is refused there as
  // every other bad request; past twice it gRPC refuses before any of this code runs.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(int64_t{2} * options.max_message_bytes, std::numeric_limits<int>::max())));
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  // gRPC 1.51 inflates a compressed message whole before it checks the receive limit: a 1 MB gzip
  // request made the server allocate (and keep) 1 GB, before the API key was checked. Requests come
  // uncompressed (clients compress none unless asked); a compressed one is refused UNIMPLEMENTED.
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_DEFLATE, false);
  builder.SetCompressionAlgorithmSupportStatus(GRPC_COMPRESS_GZIP, false);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, options.keepalive_time_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, options.keepalive_timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, options.keepalive_permit_without_calls ? 1 : 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, options.min_ping_interval_ms);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  // What the transport holds for calls whose messages are still arriving is bounded: past it gRPC
  // stops reading until memory is freed. Unbounded, a client that declared 8 MB messages, sent all
  // but a byte of each and answered pings pinned ~7.6 MB a stream (256 streams a connection, any
  // number of connections) before any handler, API key or queue bound ran.
  if (options.transport_memory_mb > 0) {
    grpc::ResourceQuota quota("glmserve-transport");
    quota.Resize(static_cast<size_t>(options.transport_memory_mb) << 20);
    builder.SetResourceQuota(quota);
  }
  // A second server on the same port is an error, not a silent load balancer.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    // The destructor's Shutdown() copes with the null server_.
    return absl::UnavailableError(
        absl::StrCat("--port ", options.port, ": cannot listen on ", FormatAddress(options.host, options.port)));
  }
  server->SetServing(false);
  return server;
}

GrpcServer::~GrpcServer() {
  if (!shut_down_) Shutdown(std::chrono::milliseconds(0));
}

std::string GrpcServer::address() const { return FormatAddress(options_.host, port_); }

void GrpcServer::SetEngine(InferenceEngine* engine, int32_t max_batch) { service_->SetEngine(engine, max_batch); }

void GrpcServer::SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer) {
  service_->SetTokenizer(std::move(tokenizer));
}

void GrpcServer::SetImageSupport(std::shared_ptr<const ImageSupport> images) {
  service_->SetImageSupport(std::move(images));
}

void GrpcServer::SetServing(bool serving) {
  if (server_ == nullptr) return;
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

void GrpcServer::StartDrain() {
  SetServing(false);
  service_->StartDrain();
}

bool GrpcServer::WaitIdle(std::chrono::milliseconds timeout) { return service_->WaitIdle(timeout); }

void GrpcServer::AbortAll() { service_->AbortAll(); }

int GrpcServer::active_calls() const { return service_->active_calls(); }

void GrpcServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ == nullptr) return;  // Start() failed before the server existed (e.g. port in use)
  // With no Inference call left, what remains are health Watch streams (they saw NOT_SERVING
  // when the drain began) and such, which never end by themselves: the grace would be waited out
  // on every shutdown a load balancer watches. gRPC's health service offers no way to end them.
  if (service_->active_calls() == 0) grace = std::chrono::milliseconds(0);
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

}  // namespace glmserve
