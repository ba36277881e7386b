#include "server/request/request_session.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/tokenizer/text_output.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/ops/logging.h"

namespace glmserve {

namespace {

double TenthsOfMs(double ms) { return std::round(ms * 10) / 10; }

// images=N image_tokens=M resized=HxW[,HxW...] on a request's log lines (nothing for text
// prompts); request_accepted adds the host's decode and preprocessing time of all its images.
void AddImageFields(const std::vector<ImageUsage>& images, bool with_times, nlohmann::json* fields) {
  if (images.empty()) return;
  int64_t tokens = 0;
  double decode_ms = 0, preprocess_ms = 0;
  for (const ImageUsage& image : images) {
    tokens += image.tokens;
    decode_ms += image.decode_ms;
    preprocess_ms += image.preprocess_ms;
  }
  (*fields)["images"] = images.size();
  (*fields)["image_tokens"] = tokens;
  (*fields)["resized"] = ResizedSizes(images);
  if (with_times) {
    (*fields)["image_decode_ms"] = TenthsOfMs(decode_ms);
    (*fields)["image_preprocess_ms"] = TenthsOfMs(preprocess_ms);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RequestSession

RequestSession::RequestSession(RequestSessions* hub, SessionInfo info, InferenceEngine* engine,
                               std::shared_ptr<SessionSink> sink)
    : hub_(hub), info_(std::move(info)), engine_(engine), sink_(std::move(sink)) {}

RequestSession::~RequestSession() = default;

void RequestSession::Cancel(absl::StatusCode why) {
  client_end_ = why;
  if (!done_) engine_->Cancel(engine_id_);  // unknown or finished ids are ignored by the engine
}

absl::StatusCode RequestSession::EndCode(const RequestResult& result) const {
  const absl::StatusCode client = client_end_;
  // What the client saw decides: it left (or its deadline ended the call) before the result was
  // handed to it, whatever the engine said, even a result that ended well in the step the client
  // left during: that answer never reached it.
  return client != absl::StatusCode::kOk ? client : result.status.code();
}

void RequestSession::MarkEndedByClient(absl::StatusCode code, absl::string_view when, RequestResult* result) {
  const bool deadline = code == absl::StatusCode::kDeadlineExceeded;
  result->status =
      absl::Status(code, absl::StrCat(deadline ? "the call's deadline passed " : "the client went away ", when));
  result->finish_reason = deadline ? FinishReason::kDeadline : FinishReason::kCancelled;
}

void RequestSession::OnEngineTokens(const std::vector<int32_t>& ids) {
  if (!info_.streaming) {
    std::lock_guard<std::mutex> lock(events_mu_);
    unary_ids_.insert(unary_ids_.end(), ids.begin(), ids.end());
  }
  // A unary request without stop strings only logs its first token: later steps need no worker.
  if (!info_.streaming && !incremental_ && first_step_seen_.exchange(true, std::memory_order_relaxed)) return;
  bool queue = false;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    pending_ids_.insert(pending_ids_.end(), ids.begin(), ids.end());
    pending_ends_.push_back(pending_ids_.size());
    queue = MarkQueued();
  }
  if (queue) hub_->Queue(shared_from_this());
}

void RequestSession::OnEngineReplay() {
  bool queue = false;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    pending_ids_.clear();  // the failed run's, not handled yet
    pending_ends_.clear();
    unary_ids_.clear();
    restart_text_ = true;
    queue = MarkQueued();
  }
  if (queue) hub_->Queue(shared_from_this());
}

void RequestSession::OnEngineDone(const RequestResult& result) {
  bool queue = false;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    if (result_) return;  // Abort() got there first (after the engine's Shutdown)
    result_ = result;
    queue = MarkQueued();
  }
  if (queue) hub_->Queue(shared_from_this());
}

bool RequestSession::MarkQueued() {
  if (queued_) return false;
  queued_ = true;
  return true;
}

void RequestSession::Deliver() {
  std::lock_guard<std::mutex> deliver(deliver_mu_);
  std::optional<RequestResult> result;
  bool restart_text = false;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    restart_text = std::exchange(restart_text_, false);
    ids_.swap(pending_ids_);
    ends_.swap(pending_ends_);
    pending_ids_.clear();
    pending_ends_.clear();
    if (result_ && !done_) result = result_;
    queued_ = false;
  }
  if (restart_text && make_text_ && !done_) text_ = make_text_();
  size_t begin = 0;
  for (size_t end : ends_) {
    step_.assign(ids_.begin() + static_cast<std::ptrdiff_t>(begin), ids_.begin() + static_cast<std::ptrdiff_t>(end));
    begin = end;
    HandleStep(step_);
  }
  if (result) Finish(std::move(*result));
}

void RequestSession::HandleStep(const std::vector<int32_t>& ids) {
  if (done_) return;
  if (!first_token_logged_) {
    first_token_logged_ = true;
    first_token_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
    if (hub_->options_.log_requests) {
      LogEvent(LogLevel::kInfo, "first_token", info_.request_id, "first token",
               {{"rpc", info_.rpc}, {"ttft_ms", first_token_ms_ + info_.front_queue_ms}});
    }
  }
  if (incremental_) {
    delta_.clear();
    const size_t kept = text_->Add(ids, &delta_);
    if (text_->stopped() && kept > 0) engine_->Cancel(engine_id_);  // the stop string completed here
    if (kept == 0) return;
    if (!info_.streaming) return;
    if (kept < ids.size()) {
      step_.resize(kept);  // `ids` is step_: the ids after the stop string are not output
      StreamStep(step_);
      return;
    }
    StreamStep(ids);
    return;
  }
  if (info_.streaming) {
    delta_.clear();
    StreamStep(ids);
  }
}

void RequestSession::StreamStep(const std::vector<int32_t>& ids) {
  streamed_ids_.insert(streamed_ids_.end(), ids.begin(), ids.end());
  sink_->OnStep(ids, delta_);
}

void RequestSession::Finish(RequestResult result) {
  done_ = true;
  bool aborted = false;
  std::vector<int32_t> unary_ids;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    aborted = aborted_;
    if (aborted) unary_ids.swap(unary_ids_);
  }
  if (aborted) {  // what the engine never reported: what the client got (or was to get), and how long it took
    result.output_ids = info_.streaming ? streamed_ids_ : std::move(unary_ids);
    result.ttft_ms = first_token_ms_;
    result.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }
  if (info_.front_queue_ms > 0) {
    result.queue_ms += info_.front_queue_ms;
    if (result.ttft_ms > 0) result.ttft_ms += info_.front_queue_ms;
    result.total_ms += info_.front_queue_ms;
  }
  hold_.reset();  // the engine's work is done: the front end's slot goes to the next request
  std::string tail;
  std::string text;
  if (text_ != nullptr) {
    // A stop string completed while generating (the engine saw a cancel), or by the final flush
    // (a character cut short at the end becomes U+FFFD): the latter only ends a generation that
    // ended well (length, end id), never turns an error into a stop.
    const bool stopped_while_generating = text_->stopped();
    if (!incremental_) {
      std::string unused;
      text_->Add(result.output_ids, &unused);
    }
    tail = text_->Finish();
    text = text_->text();
    if (stopped_while_generating || (text_->stopped() && result.status.ok())) {
      result.status = absl::OkStatus();
      result.finish_reason = FinishReason::kStop;
      if (result.output_ids.size() > text_->kept_ids()) result.output_ids.resize(text_->kept_ids());
    }
  }
  hub_->Unregister(engine_id_);
  absl::StatusCode end = EndCode(result);
  // The client's end instead of the engine's (whose message says "cancelled", or whose result the
  // client never got): the log line and the metrics say how the call ended.
  if (end != result.status.code()) {
    MarkEndedByClient(end, absl::StrCat("after ", result.output_ids.size(), " generated tokens"), &result);
  }
  // Let go of the sink: it holds this session too (to cancel it) until it is done.
  std::shared_ptr<SessionSink> sink = std::move(sink_);
  bool log_now = true;
  if (sink->TakesFinishedLog(result)) {
    std::lock_guard<std::mutex> lock(deferred_mu_);
    // The sink's call may have ended between TakesFinishedLog and here (its client left as the
    // last step's ids went out): what it reported then decides now.
    log_now = call_ended_before_result_;
    if (log_now) {
      EndAsCall(call_end_, &result, &end);
    } else {
      deferred_result_ = result;
      deferred_code_ = end;
    }
  }
  if (log_now) hub_->LogFinished(*this, result, CodeName(end));
  sink->OnFinish(result, tail, text);
}

void RequestSession::EndAsCall(std::optional<absl::StatusCode> ended, RequestResult* result, absl::StatusCode* code) {
  if (ended && *code == absl::StatusCode::kOk) {
    *code = *ended;
    MarkEndedByClient(*code, "before it read the result", result);
  }
}

void RequestSession::LogDeferredFinish(std::optional<absl::StatusCode> ended) {
  std::optional<RequestResult> result;
  absl::StatusCode code;
  {
    std::lock_guard<std::mutex> lock(deferred_mu_);
    result = std::exchange(deferred_result_, std::nullopt);
    code = deferred_code_;
    if (!result) {  // before Finish kept the result, Finish logs it as this says (after, nothing is left to)
      call_ended_before_result_ = true;
      call_end_ = ended;
    }
  }
  if (!result) return;
  EndAsCall(ended, &*result, &code);
  hub_->LogFinished(*this, *result, CodeName(code));
}

void RequestSession::Abort() {
  RequestResult result;
  result.status = absl::UnavailableError("server shut down before the request finished");
  result.finish_reason = FinishReason::kCancelled;
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    if (result_) return;  // the engine's own result is already on its way
    aborted_ = true;
  }
  OnEngineDone(result);
}

// ---------------------------------------------------------------------------------------------
// RequestSessions

RequestSessions::RequestSessions(RequestSessionsOptions options) : options_(std::move(options)) {
  std::random_device rd;
  id_prefix_ = absl::StrFormat("%s-%08x", options_.id_prefix, rd());
  const int workers = std::max(1, options_.delivery_workers);
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { DeliveryLoop(); });
}

RequestSessions::~RequestSessions() {
  LogRefusalsLeftOut();
  {
    std::lock_guard<std::mutex> lock(delivery_mu_);
    delivery_stop_ = true;
  }
  delivery_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void RequestSessions::SetEngine(InferenceEngine* engine) {
  const ModelInfo& info = engine->model_info();
  std::lock_guard<std::mutex> lock(mu_);
  model_.vocab_size = info.vocab_size;
  // What one sequence can hold: the position limit, or the KV pool where it holds fewer tokens
  // (a small --kv-blocks / --kv-cpu-budget-mb). Advertised (max_model_len, ModelInfo.max_context),
  // and a default max_new_tokens shrinks to it.
  model_.max_context = info.max_context();
  model_.context_is_kv_capacity = info.context_is_kv_capacity();
  model_.eos_token_ids = info.eos_token_ids;
  engine_ = engine;
}

void RequestSessions::SetTokenizer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer) {
  std::lock_guard<std::mutex> lock(mu_);
  tokenizer_ = std::move(tokenizer);
  model_.tokenizer = tokenizer_.get();
}

void RequestSessions::SetImageSupport(std::shared_ptr<const ImageSupport> images) {
  std::lock_guard<std::mutex> lock(mu_);
  model_.images = std::move(images);
}

void RequestSessions::StartDrain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

bool RequestSessions::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

ValidationModel RequestSessions::model() const {
  std::lock_guard<std::mutex> lock(mu_);
  return model_;
}

std::string RequestSessions::NewRequestId() { return absl::StrCat(id_prefix_, "-", next_id_.fetch_add(1)); }

std::optional<Refusal> RequestSessions::Admit(const std::string& client, Admission* out) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) {
      return MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kDraining,
                         "server is draining; retry on another replica");
    }
    if (engine_ == nullptr) {
      return MakeRefusal(absl::StatusCode::kUnavailable, RefusalKind::kUnavailable, options_.loading_message,
                         options_.loading_retry_after_ms);
    }
    out->engine = engine_;
    out->model = model_;
  }
  out->client = client;
  // After the 503s (draining, loading), before tokenization.
  if (ClientQuota* quota = options_.client_quota.get(); quota != nullptr) {
    bool admitted = false;
    out->quota = quota->TryAcquire(client, &admitted);
    if (!admitted) {
      return MakeRefusal(absl::StatusCode::kResourceExhausted, RefusalKind::kClientQuota,
                         QuotaExceededMessage(quota->max_per_client()), 1000);
    }
  }
  return std::nullopt;
}

std::optional<Refusal> RequestSessions::Validate(const GenerateRequest& request, Dialect dialect,
                                                 const Admission& admission, const SessionInfo& info,
                                                 InferenceRequest* out, const std::function<bool()>& abandoned) {
  std::shared_ptr<void> tokenizing;  // held while ValidateRequest tokenizes
  if (ByteBudget* budget = options_.tokenize_budget.get(); budget != nullptr) {
    const int64_t text_bytes = PromptTextBytes(request);
    if (text_bytes >= options_.tokenize_budget_min_bytes) {
      tokenizing = budget->TryAcquire(text_bytes);
      if (tokenizing == nullptr) {
        return MakeRefusal(
            absl::StatusCode::kResourceExhausted, RefusalKind::kQueueFull,
            absl::StrCat(text_bytes, " bytes of prompt text wait for the tokenizer, which holds ", budget->in_flight(),
                         " bytes of other prompts (at most ", budget->limit(), " at once); retry"),
            200);
      }
    }
  }
  std::optional<Refusal> refusal =
      ValidateRequest(request, options_.limits, admission.model, dialect, out, {admission.client, abandoned});
  if (refusal && refusal->prompt_tokens > 0) {  // the prompt's length is known only after tokenization
    const int32_t max_context = admission.model.max_context;
    LogEvent(LogLevel::kWarn, "prompt_too_long", info.request_id,
             absl::StrCat("prompt of ", refusal->prompt_tokens, " tokens is too long (max context ", max_context,
                          admission.model.context_is_kv_capacity ? ", the KV cache's capacity" : "", "); refusing"),
             {{"rpc", info.rpc},
              {"prompt_tokens", refusal->prompt_tokens},
              {"max_position_embeddings", max_context},
              {"above_max_position_embeddings", refusal->prompt_tokens > max_context}});
  }
  return refusal;
}

std::optional<Refusal> RequestSessions::Submit(const Admission& admission, InferenceRequest request, SessionInfo info,
                                               const std::vector<std::string>& stop, std::shared_ptr<SessionSink> sink,
                                               std::shared_ptr<RequestSession>* out) {
  const bool streaming = info.streaming;
  std::shared_ptr<void> hold = std::move(info.hold_until_done);
  auto session =
      std::shared_ptr<RequestSession>(new RequestSession(this, std::move(info), admission.engine, std::move(sink)));
  session->hold_ = std::move(hold);
  if (admission.model.tokenizer != nullptr) {
    // The ids that end generation (the request's, else the model's end ids) give no text; stop
    // strings wait for min_new_tokens as stop ids do.
    session->make_text_ = [tokenizer = admission.model.tokenizer, stop,
                           end_ids = request.params.stop_token_ids.empty() ? admission.model.eos_token_ids
                                                                           : request.params.stop_token_ids,
                           min_new_tokens = static_cast<size_t>(std::max(0, request.params.min_new_tokens))] {
      return std::make_unique<tokenizer::TextOutput>(tokenizer, stop, end_ids, min_new_tokens);
    };
    session->text_ = session->make_text_();
    // Without stop strings a unary request decodes once, from the result (and stays replayable).
    session->incremental_ = streaming || !stop.empty();
  }
  // Engine ids are unique even when clients reuse a request id (a retry may arrive while the
  // engine still holds the previous attempt; gRPC and HTTP share the engine): "<request_id>#<n>",
  // n counted over the process, so engine logs still name it.
  static std::atomic<uint64_t> next_engine_id{1};
  session->engine_id_ = absl::StrCat(session->info_.request_id, "#", next_engine_id.fetch_add(1));
  request.request_id = session->engine_id_;
  // Admit() let it in before any drain (it refuses from then on): a drain that began since, while
  // it was validated or waited for an HTTP serving slot, still owes it its answer.
  request.admitted_before_drain = true;
  session->images_ = ImageUsages(request.multimodal.get());
  session->client_ = admission.client;
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_flight_.emplace(session->engine_id_, session);
  }
  // request_accepted is logged once the engine took the request (a refused one gets its
  // request_refused line only), and before the session's own lines: its delivery waits for it.
  nlohmann::json accepted;
  if (options_.log_requests) {
    accepted = {{"rpc", session->info_.rpc},
                {"client", admission.client},
                {"engine_id", session->engine_id_},
                {"prompt_tokens", request.input_ids.size()},
                {"max_new_tokens", request.params.max_new_tokens}};
    AddImageFields(session->images_, /*with_times=*/true, &accepted);
    if (session->info_.received) {
      // The host's work on it; a wait for an HTTP serving slot is queueing (queue_ms), not host time.
      const double in_hand_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - *session->info_.received)
              .count();
      accepted["host_ms"] = TenthsOfMs(std::max(0.0, in_hand_ms - session->info_.front_queue_ms));
    }
    accepted.update(session->info_.accepted_fields);
  }
  std::unique_lock<std::mutex> delivery_waits(session->deliver_mu_);
  RequestCallbacks callbacks;
  const bool tokens_matter = streaming || session->incremental_ || options_.log_requests;
  if (tokens_matter) {
    callbacks.on_tokens = [session](const std::vector<int32_t>& ids) { session->OnEngineTokens(ids); };
  }
  // Nothing reaches the client before the result, so an engine fault may rerun it (stop strings'
  // incremental decoding starts over: OnEngineReplay).
  callbacks.replayable_after_tokens = !streaming;
  callbacks.on_replay = [session] { session->OnEngineReplay(); };
  callbacks.on_done = [session](const RequestResult& result) { session->OnEngineDone(result); };
  absl::Status submitted = admission.engine->Submit(std::move(request), std::move(callbacks));
  if (!submitted.ok()) {
    Unregister(session->engine_id_);
    session->done_ = true;
    Refusal refusal = RefusalFromStatus(submitted);
    if (refusal.kind == RefusalKind::kUnavailable && draining()) refusal.kind = RefusalKind::kDraining;
    return refusal;
  }
  if (options_.log_requests) {
    LogEvent(LogLevel::kInfo, "request_accepted", session->info_.request_id, "request accepted", accepted);
  }
  delivery_waits.unlock();
  if (options_.observer != nullptr) {
    for (const ImageUsage& image : session->images_) {
      options_.observer->OnImageAccepted(image.tokens, (image.decode_ms + image.preprocess_ms) / 1000.0);
    }
  }
  *out = std::move(session);
  return std::nullopt;
}

void RequestSessions::Refused(const std::string& request_id, const std::string& rpc, const Refusal& refusal,
                              nlohmann::json fields, double queued_ms) {
  const char* code = CodeName(refusal.code);
  if (options_.observer != nullptr) {
    RequestResult waited;  // what a front end's queue adds to the metrics: its wait alone
    waited.status = absl::Status(refusal.code, refusal.message);
    waited.queue_ms = queued_ms;
    options_.observer->OnRequestFinished(code, queued_ms > 0 ? &waited : nullptr);
  }
  if (queued_ms > 0) fields["queue_ms"] = TenthsOfMs(queued_ms);
  if (!options_.log_requests) return;
  int64_t left_out = 0;
  {
    std::lock_guard<std::mutex> lock(refused_log_mu_);
    LogSampler& sampler = refused_log_.try_emplace(refusal.code, options_.refused_log_lines_per_second).first->second;
    if (!sampler.Admit(LogSampler::Clock::now(), &left_out)) return;
  }
  nlohmann::json all = {{"rpc", rpc}, {"status", code}};
  all.update(fields);
  all["message"] = refusal.message;
  if (left_out > 0) all["refusals_not_logged"] = left_out;  // with this code, since its last line
  LogEvent(LogLevel::kInfo, "request_refused", request_id, "request refused", all);
}

void RequestSessions::LogRefusalsLeftOut() {
  std::lock_guard<std::mutex> lock(refused_log_mu_);
  for (auto& [code, sampler] : refused_log_) {
    const int64_t n = sampler.TakeLeftOut();
    if (n == 0) continue;
    LogEvent(LogLevel::kInfo, "request_refusals_not_logged", "",
             absl::StrCat(n, " refusals (", CodeName(code), ") not logged one by one since the last request_refused"),
             {{"status", CodeName(code)}, {"count", n}});
  }
}

void RequestSessions::LogFinished(const RequestSession& session, const RequestResult& result, const char* code) {
  if (options_.observer != nullptr) options_.observer->OnRequestFinished(code, &result);
  if (!options_.log_requests) return;
  nlohmann::json fields = {{"rpc", session.info_.rpc},
                           {"client", session.client_},
                           {"status", code},
                           {"finish", FinishReasonName(result.finish_reason)},
                           {"prompt_tokens", result.prompt_tokens},
                           {"completion_tokens", result.output_ids.size()},
                           {"queue_ms", result.queue_ms},
                           {"ttft_ms", result.ttft_ms},
                           {"total_ms", result.total_ms}};
  AddImageFields(session.images_, /*with_times=*/false, &fields);
  if (!result.status.ok()) fields["message"] = std::string(result.status.message());
  const bool failed = !result.status.ok() && result.status.code() != absl::StatusCode::kCancelled &&
                      result.status.code() != absl::StatusCode::kDeadlineExceeded &&
                      session.client_end_ == absl::StatusCode::kOk;
  LogEvent(failed ? LogLevel::kWarn : LogLevel::kInfo, "request_finished", session.info_.request_id, "request finished",
           fields);
}

void RequestSessions::Unregister(const std::string& engine_id) {
  std::lock_guard<std::mutex> lock(mu_);
  in_flight_.erase(engine_id);
}

void RequestSessions::Queue(std::shared_ptr<RequestSession> session) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(delivery_mu_);
    delivery_.push_back(std::move(session));
    // The engine thread queues every streaming session each step, between two GPU steps: it
    // wakes a sleeping worker only when no wake is already on its way; a worker that finds more
    // queued wakes the next (DeliveryLoop), so a step costs the engine thread one futex wake, not
    // one per worker or session.
    wake = idle_workers_ > 0 && !wake_pending_;
    if (wake) wake_pending_ = true;
  }
  if (wake) delivery_cv_.notify_one();
}

void RequestSessions::DeliveryLoop() {
  std::vector<std::shared_ptr<RequestSession>> batch;
  std::unique_lock<std::mutex> lock(delivery_mu_);
  while (true) {
    ++idle_workers_;
    while (!delivery_stop_ && delivery_.empty()) {
      delivery_cv_.wait(lock);
      wake_pending_ = false;  // whichever worker wakes takes the wake: the next Queue may wake another
    }
    --idle_workers_;
    if (delivery_.empty()) return;  // stopping, and nothing left to deliver
    // A worker's share of what is queued in one take: the engine thread, queuing a step's sessions
    // one by one, then meets this lock once per share instead of once per session.
    const size_t share = std::max<size_t>(1, delivery_.size() / std::max(1, options_.delivery_workers));
    for (size_t i = 0; i < share; ++i) {
      batch.push_back(std::move(delivery_.front()));
      delivery_.pop_front();
    }
    const bool wake_next = !delivery_.empty() && idle_workers_ > 0 && !wake_pending_;
    if (wake_next) wake_pending_ = true;
    ++deliveries_running_;
    lock.unlock();
    if (wake_next) delivery_cv_.notify_one();
    for (std::shared_ptr<RequestSession>& session : batch) session->Deliver();
    batch.clear();
    lock.lock();
    --deliveries_running_;
    if (delivery_.empty() && deliveries_running_ == 0) delivery_idle_cv_.notify_all();
  }
}

void RequestSessions::Flush() {
  std::unique_lock<std::mutex> lock(delivery_mu_);
  delivery_idle_cv_.wait(lock, [this] { return delivery_.empty() && deliveries_running_ == 0; });
}

void RequestSessions::AbortAll() {
  Flush();  // a result the engine already gave is delivered, not replaced by UNAVAILABLE
  std::vector<std::shared_ptr<RequestSession>> sessions;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, weak] : in_flight_) {
      if (auto session = weak.lock()) sessions.push_back(std::move(session));
    }
  }
  for (auto& session : sessions) session->Abort();
  Flush();
}

}  // namespace glmserve
