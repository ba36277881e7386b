// One request from admission to its result, for every front end (gRPC, HTTP): admission (drain,
// loading, the per-client cap), validation, submission, cancellation, the engine's events handled
// OFF the engine thread (incremental detokenization, stop strings), request logs with the trace id,
// metrics (RequestObserver) and the code names. A front end authenticates, parses its wire format
// into a GenerateRequest, calls the steps below and renders what comes back (SessionSink, Refusal).
// No gRPC, no HTTP, no LibTorch types.
//
// Threads: the engine's callbacks only append to the session's buffer and queue the session for a
// delivery worker (at most once at a time, so the queue is bounded by the sessions in flight);
// the workers detokenize, match stop strings, log and call the sink. A StartWrite or a tokenizer
// call on the engine thread would delay every stream's next step.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "runtime/engine.h"
#include "server/ops/log_sampler.h"
#include "server/ops/request_observer.h"
#include "server/request/byte_budget.h"
#include "server/request/client_quota.h"
#include "server/request/request.h"
#include "server/request/request_validation.h"

namespace glmserve {

namespace tokenizer {
class TextOutput;
}

struct RequestSessionsOptions {
  FrontendLimits limits;
  // One info line per accepted, refused and finished request (and the first token).
  bool log_requests = true;
  // request_refused lines a second, per status code, beyond which refusals are counted (metrics)
  // and summed into the next line written (refusals_not_logged), not logged one by one: a client
  // retrying a refusal at once must not flood the log. 0 = every refusal.
  int refused_log_lines_per_second = 20;
  // Sees every finished or refused request exactly once (metrics). Null = none.
  std::shared_ptr<RequestObserver> observer;
  // The per-client cap on queued plus running requests (shared by the front ends). Null = none.
  std::shared_ptr<ClientQuota> client_quota;
  // The cap on prompt text being tokenized at once, in bytes (shared by the front ends); a prompt
  // of at least tokenize_budget_min_bytes that would pass it is refused RESOURCE_EXHAUSTED with a
  // retry-after. Null = none.
  std::shared_ptr<ByteBudget> tokenize_budget;
  // Smaller prompts (all their text) skip the cap: their transient memory is small.
  int64_t tokenize_budget_min_bytes = int64_t{64} << 10;
  // Generated request ids are "<id_prefix>-<8 random hex>-<n>" ("glm" for gRPC, "glmh" for HTTP).
  std::string id_prefix = "glm";
  // What a request hears while no engine is set (the front ends word it differently).
  std::string loading_message = "model is loading; retry later";
  // How long that refusal tells clients to wait before they retry (gRPC's retry pushback, HTTP's
  // Retry-After): a client's own backoff may be spent in a few milliseconds, a load or a
  // supervised restart takes longer.
  int64_t loading_retry_after_ms = 500;
  // Threads that handle engine events. Two keep up with 256 streams on an H200: the work per
  // event is a tokenizer step and a queued write.
  int delivery_workers = 2;
};

// A front end's options (GrpcServerOptions, HttpServerOptions: the same names for what they share)
// as its sessions' options; `id_prefix` tells its request ids apart.
template <typename FrontEndOptions>
RequestSessionsOptions SessionsOptionsOf(const FrontEndOptions& o, std::string id_prefix) {
  RequestSessionsOptions s;
  s.limits = o.limits;
  s.log_requests = o.log_requests;
  s.refused_log_lines_per_second = o.refused_log_lines_per_second;
  s.observer = o.observer;
  s.client_quota = o.client_quota;
  s.tokenize_budget = o.tokenize_budget;
  s.id_prefix = std::move(id_prefix);
  return s;
}

// The front end's half of a session. Called on a delivery worker, one call at a time per session,
// in the engine's order; must not block for long (other sessions wait for the worker).
class SessionSink {
 public:
  virtual ~SessionSink() = default;
  // One engine step of a streaming (or stop-string) session: the ids that belong to the output
  // (those after a stop string are dropped; a step may be empty then) and the text now final ("" while
  // held back, or without a tokenizer).
  virtual void OnStep(const std::vector<int32_t>& ids, const std::string& text) = 0;
  // Exactly once per submitted session: the result (a stop string turns a cancel into OK / STOP
  // with the ids cut), the text not yet handed out in OnStep, and the whole text. Refusals before
  // submission never reach the sink.
  virtual void OnFinish(const RequestResult& result, const std::string& tail, const std::string& text) = 0;
  // Called just before OnFinish. True when the sink reports the request_finished line and count
  // itself, through RequestSession::LogDeferredFinish, once it knows what its client got: a stream
  // whose client does not read holds its messages behind HTTP/2 flow control, and counted at the
  // engine's end it was counted OK while its call ended DEADLINE_EXCEEDED.
  virtual bool TakesFinishedLog(const RequestResult& /*result*/) { return false; }
};

// What the front end knows about a request before it is submitted.
struct SessionInfo {
  std::string request_id;  // the trace id, in every log line
  std::string rpc;         // "Infer", "/v1/completions": logs
  // Steps are delivered to the sink (else only the result; a session with stop strings still
  // decodes incrementally, to cancel at the stop).
  bool streaming = false;
  nlohmann::json accepted_fields = nlohmann::json::object();  // extra fields of request_accepted
  // When the front end had the whole request in hand: request_accepted logs host_ms, the time
  // from there to the engine's queue (parsing, tokenization, images). Unset: not logged.
  std::optional<std::chrono::steady_clock::time_point> received;
  // Released once the engine has finished the request (HTTP's serving slot).
  std::shared_ptr<void> hold_until_done;
  // How long the front end held the request in its own queue before the engine's (HTTP: waiting
  // for a serving slot, counted in glmserve_queue_depth): part of its queue wait, TTFT and total,
  // in the result's metrics and log line, which the engine times from its own submit.
  double front_queue_ms = 0;
};

// What admission hands to the steps after it: the engine, a snapshot of the model, the client's
// place under the cap (released by the front end before its final answer goes out).
struct Admission {
  InferenceEngine* engine = nullptr;
  ValidationModel model;
  ClientQuota::Lease quota;
  std::string client;  // Admit's: the API key's name or the peer address (image decode shares)
};

class RequestSessions;

// One submitted request. The engine's callbacks and the delivery workers keep it alive until the
// result was delivered.
class RequestSession : public std::enable_shared_from_this<RequestSession> {
 public:
  ~RequestSession();
  const std::string& request_id() const { return info_.request_id; }
  const std::string& engine_id() const { return engine_id_; }
  // The client went away (`why` CANCELLED), or the transport ended the call at its deadline
  // (DEADLINE_EXCEEDED: gRPC cancels such a call itself): the engine frees the slot, and the result,
  // even one that ended well in the step the client left during, is counted and logged as `why`
  // (EndCode) unless it was handed to the sink before. Any thread; never under a lock the sink
  // takes.
  void Cancel(absl::StatusCode why = absl::StatusCode::kCancelled);
  // For a sink whose TakesFinishedLog was true, once its call has ended: logs and counts the
  // result kept at the engine's end, as `ended` (DEADLINE_EXCEEDED, CANCELLED) where the call
  // ended before the result reached the client, else as the result's own code. Once; any thread.
  void LogDeferredFinish(std::optional<absl::StatusCode> ended);

 private:
  friend class RequestSessions;
  RequestSession(RequestSessions* hub, SessionInfo info, InferenceEngine* engine, std::shared_ptr<SessionSink> sink);

  // Engine thread: record and queue, under one lock of events_mu_ each.
  void OnEngineTokens(const std::vector<int32_t>& ids);
  void OnEngineDone(const RequestResult& result);
  // A supervising engine reruns the request from scratch (RequestCallbacks::on_replay): the text
  // decoded so far is dropped before the rerun's ids are handled.
  void OnEngineReplay();
  // Under events_mu_: true when the session was not yet queued (the caller queues it).
  bool MarkQueued();
  // Delivery worker.
  void Deliver();
  void HandleStep(const std::vector<int32_t>& ids);
  // A streaming step's ids to the sink (and kept: an aborted session's result reports them).
  void StreamStep(const std::vector<int32_t>& ids);
  void Finish(RequestResult result);
  // The code a result is counted and logged as: Cancel's `why` where the client ended the call
  // first, else the engine's.
  absl::StatusCode EndCode(const RequestResult& result) const;
  // A result its client never got, as the call ended for it (`code` CANCELLED or
  // DEADLINE_EXCEEDED): its status (naming `when`) and finish reason.
  static void MarkEndedByClient(absl::StatusCode code, absl::string_view when, RequestResult* result);
  // A kept result as its call ended: `ended` (DEADLINE_EXCEEDED, CANCELLED) where the call ended
  // before the result reached the client and the result was OK (*code and *result then say so).
  static void EndAsCall(std::optional<absl::StatusCode> ended, RequestResult* result, absl::StatusCode* code);
  // After the engine's Shutdown(): the result it can no longer give.
  void Abort();

  RequestSessions* const hub_;
  const SessionInfo info_;
  InferenceEngine* const engine_;
  std::shared_ptr<SessionSink> sink_;  // delivery worker; dropped after OnFinish
  // The result Finish kept for LogDeferredFinish (set before the sink's OnFinish; taken once).
  std::mutex deferred_mu_;
  std::optional<RequestResult> deferred_result_;
  absl::StatusCode deferred_code_ = absl::StatusCode::kOk;
  // Guarded by deferred_mu_: LogDeferredFinish found no kept result (before Finish, the call ended
  // first), with its `ended`.
  bool call_ended_before_result_ = false;
  std::optional<absl::StatusCode> call_end_;
  std::string engine_id_;
  std::vector<ImageUsage> images_;               // the prompt's images as resized (request logs)
  std::shared_ptr<void> hold_;                   // SessionInfo::hold_until_done; delivery worker
  std::unique_ptr<tokenizer::TextOutput> text_;  // null without a tokenizer
  // A fresh text_ (the request's stop strings, end ids, min_new_tokens), for a rerun.
  std::function<std::unique_ptr<tokenizer::TextOutput>()> make_text_;
  bool incremental_ = false;  // text_ fed per step (streaming or stop strings)
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::atomic<absl::StatusCode> client_end_{absl::StatusCode::kOk};  // Cancel's `why`; OK: not cancelled
  std::atomic<bool> done_{false};                                    // the result was handled (Finish ran)

  // What the engine reported and no worker has handled yet: the ids of every step back to back
  // and where each step ends, so a step costs no allocation once the buffers have grown.
  std::mutex events_mu_;
  std::vector<int32_t> pending_ids_;     // guarded by events_mu_
  std::vector<size_t> pending_ends_;     // guarded by events_mu_
  std::optional<RequestResult> result_;  // guarded by events_mu_
  bool queued_ = false;                  // guarded by events_mu_
  bool aborted_ = false;                 // guarded by events_mu_; Abort() gave the result
  bool restart_text_ = false;            // guarded by events_mu_; OnEngineReplay ran since Deliver
  // A unary request's ids as the engine reported them: what Abort's record counts (a shutdown
  // cut request was logged with completion_tokens 0 after hundreds).
  std::vector<int32_t> unary_ids_;  // guarded by events_mu_
  std::string client_;              // Admission's: the API key's name (key#N) or the peer address; logs
  // Engine threads (a rebuilt engine's may overlap a stuck one's last step).
  std::atomic<bool> first_step_seen_{false};
  // One worker at a time; the swapped-out buffers and the step being handled.
  std::mutex deliver_mu_;              // also held by Submit until request_accepted is logged
  std::vector<int32_t> ids_;           // guarded by deliver_mu_
  std::vector<size_t> ends_;           // guarded by deliver_mu_
  std::vector<int32_t> step_;          // guarded by deliver_mu_
  std::string delta_;                  // guarded by deliver_mu_
  bool first_token_logged_ = false;    // guarded by deliver_mu_
  double first_token_ms_ = 0;          // guarded by deliver_mu_; since start_
  std::vector<int32_t> streamed_ids_;  // guarded by deliver_mu_; what a streaming client was sent
};

// The sessions of one front end and the delivery workers they share.
class RequestSessions {
 public:
  explicit RequestSessions(RequestSessionsOptions options);
  // Joins the workers; after every session ended. Never from a worker: a sink must not hold the
  // last reference to what owns this object (front ends Flush() before letting go).
  ~RequestSessions();
  RequestSessions(const RequestSessions&) = delete;
  RequestSessions& operator=(const RequestSessions&) = delete;

  const RequestSessionsOptions& options() const { return options_; }

  // The engine must outlive every session. Requests are refused (loading) until it is set.
  void SetEngine(InferenceEngine* engine);
  void SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer);
  // A vision model's image decoding and preprocessing (server/request/media.h); null = text only.
  void SetImageSupport(std::shared_ptr<const ImageSupport> images);
  // New requests UNAVAILABLE (draining); the engine itself is drained by whoever owns it.
  void StartDrain();
  bool draining() const;
  ValidationModel model() const;

  std::string NewRequestId();

  // Admission: draining or no engine: UNAVAILABLE; over the per-client cap: RESOURCE_EXHAUSTED.
  // Before tokenization. `client` is the API key's name or the peer address.
  std::optional<Refusal> Admit(const std::string& client, Admission* out);
  // ValidateRequest; a too-long prompt is also logged (prompt_too_long, with its length).
  // `abandoned` (empty = never): answers true once the client has gone (gRPC: the call cancelled;
  // HTTP: the connection closed); image preparation then stops and the request is refused
  // CANCELLED (MediaOptions::abandoned). Images also stop at request.deadline (DEADLINE_EXCEEDED).
  std::optional<Refusal> Validate(const GenerateRequest& request, Dialect dialect, const Admission& admission,
                                  const SessionInfo& info, InferenceRequest* out,
                                  const std::function<bool()>& abandoned = {});
  // Submits; on OK the session reports to `sink` exactly once (OnFinish). On a refusal nothing
  // was taken.
  std::optional<Refusal> Submit(const Admission& admission, InferenceRequest request, SessionInfo info,
                                const std::vector<std::string>& stop, std::shared_ptr<SessionSink> sink,
                                std::shared_ptr<RequestSession>* out);

  // Logs and counts a refusal (any step's, or the front end's own: authentication, parsing,
  // transport limits). `fields`: the front end's extra log fields (http_status, param).
  // `queued_ms`: how long it waited in the front end's own queue before it was refused there (its
  // deadline passed, its client left): a queue-wait sample, as a request the engine queued has.
  void Refused(const std::string& request_id, const std::string& rpc, const Refusal& refusal,
               nlohmann::json fields = nlohmann::json::object(), double queued_ms = 0);

  // Returns once every queued engine event has been handled.
  void Flush();
  // After the engine's Shutdown(): every session still waiting for a result ends UNAVAILABLE.
  void AbortAll();

 private:
  friend class RequestSession;
  void Queue(std::shared_ptr<RequestSession> session);
  void DeliveryLoop();
  void Unregister(const std::string& engine_id);
  void LogFinished(const RequestSession& session, const RequestResult& result, const char* code);
  // At destruction: one line per status code whose refusals were left out of the log since its
  // last request_refused line (a flood's tail).
  void LogRefusalsLeftOut();

  const RequestSessionsOptions options_;
  std::string id_prefix_;
  std::atomic<uint64_t> next_id_{1};

  mutable std::mutex mu_;
  InferenceEngine* engine_ = nullptr;                               // guarded by mu_
  bool draining_ = false;                                           // guarded by mu_
  ValidationModel model_;                                           // guarded by mu_
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;           // guarded by mu_
  std::map<std::string, std::weak_ptr<RequestSession>> in_flight_;  // guarded by mu_

  std::mutex refused_log_mu_;
  std::map<absl::StatusCode, LogSampler> refused_log_;  // by code; guarded by refused_log_mu_

  std::mutex delivery_mu_;
  std::condition_variable delivery_cv_;
  std::condition_variable delivery_idle_cv_;
  std::deque<std::shared_ptr<RequestSession>> delivery_;  // guarded by delivery_mu_
  int deliveries_running_ = 0;                            // guarded by delivery_mu_
  int idle_workers_ = 0;                                  // waiting on delivery_cv_; guarded by delivery_mu_
  bool wake_pending_ = false;   // notified, no worker woken by it yet; guarded by delivery_mu_
  bool delivery_stop_ = false;  // guarded by delivery_mu_
  std::vector<std::thread> workers_;
};

}  // namespace glmserve
