#include "server/ops/watchdog.h"

#include <algorithm>
#include <future>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/ops/logging.h"

namespace glmserve {
namespace {

int64_t SinceEpochNs(Clock::TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

double MsBetween(Clock::TimePoint from, Clock::TimePoint to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// Longest real-time wait between checks of the clock. A real clock is waited on exactly; a fake
// one wakes the waiter through its advance listener, and this bound only covers a wake-up lost
// between the waiter's check and its wait.
constexpr std::chrono::milliseconds kMaxWait{200};

// How often the recovering thread looks for requests past their deadlines while an engine builds
// (real time: a build is seconds to a minute; a request's answer comes at most this late).
constexpr std::chrono::milliseconds kDeadlinePoll{20};

}  // namespace

absl::Status ValidateWatchdogOptions(const WatchdogOptions& o) {
  if (o.stall_timeout.count() <= 0) return absl::InvalidArgumentError("stall_timeout: must be > 0");
  if (o.backoff_initial.count() < 0) return absl::InvalidArgumentError("backoff_initial: must be >= 0");
  if (o.backoff_max.count() < 0) return absl::InvalidArgumentError("backoff_max: must be >= 0");
  if (o.max_failures < 1) return absl::InvalidArgumentError("max_failures: must be >= 1");
  if (o.window.count() <= 0) return absl::InvalidArgumentError("window: must be > 0");
  if (o.canary_interval.count() < 0) return absl::InvalidArgumentError("canary_interval: must be >= 0 (0 = off)");
  if (o.warmup_timeout.count() <= 0) return absl::InvalidArgumentError("warmup_timeout: must be > 0");
  if (o.shutdown_timeout.count() < 0) return absl::InvalidArgumentError("shutdown_timeout: must be >= 0");
  return absl::OkStatus();
}

absl::Status WarmUpEngine(InferenceEngine* engine, const std::string& request_id, std::chrono::milliseconds timeout,
                          Clock& clock) {
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    absl::Status status;
  };
  auto done = std::make_shared<Done>();
  InferenceRequest request;
  request.request_id = request_id;
  // Two tokens: a prompt step, not a one-token step that runs as a decode. The executor's prompt
  // path keeps per-thread state to build on its first step (LibTorch's cuDNN attention graphs,
  // seconds on a GPU), which this request builds before the server reports serving.
  request.input_ids = {0, 0};
  request.params.max_new_tokens = 1;
  request.deadline = clock.Now() + timeout;
  RequestCallbacks callbacks;
  callbacks.on_done = [done](const RequestResult& r) {
    {
      std::lock_guard<std::mutex> lock(done->mu);
      done->done = true;
      done->status = r.status;
    }
    done->cv.notify_all();
  };
  const Clock::TimePoint give_up = clock.Now() + timeout + std::chrono::seconds(1);
  absl::Status submitted = engine->Submit(std::move(request), std::move(callbacks));
  if (!submitted.ok()) return submitted;
  const int64_t listener = clock.AddAdvanceListener([done] {
    { std::lock_guard<std::mutex> lock(done->mu); }  // a waiter between its check and its wait
    done->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(done->mu);
  for (Clock::TimePoint now = clock.Now(); !done->done && now < give_up; now = clock.Now()) {
    done->cv.wait_for(lock, std::min<Clock::Duration>(give_up - now, kMaxWait));
  }
  const bool finished = done->done;
  const absl::Status status = done->status;
  lock.unlock();
  clock.RemoveAdvanceListener(listener);
  if (!finished) {
    return absl::DeadlineExceededError(
        absl::StrCat(request_id, ": 1-token forward did not finish within ", timeout.count(), " ms"));
  }
  return status;
}

// One accepted request. `generation` is the engine holding it; -1 while it waits for a rebuilt
// engine (requeued). Callbacks of other generations are stale and ignored.
struct SelfHealingEngine::Tracked {
  InferenceRequest request;  // a copy, for requeue
  RequestCallbacks callbacks;
  int generation = 0;
  bool streamed = false;
  // The ids the client was sent: a streamed request the engine's fault ends is resolved with them
  // (its log line and token counters say what it got, not 0).
  std::vector<int32_t> streamed_ids;
  bool done = false;
  // Its client cancelled. The engine it was sent to may be stuck and never act on it: after a
  // fault it ends CANCELLED instead of running again on the next engine for nobody.
  bool cancel_requested = false;
  // When the client submitted it, and when the engine now running it got it (later after a
  // requeue): the engine times from the latter, the client waited from the former.
  Clock::TimePoint submitted;
  Clock::TimePoint engine_submitted;
  std::optional<Clock::TimePoint> first_token;  // when the client's first ids were passed on
  std::mutex cb_mu;                             // held while the client's callbacks run: none after the final on_done
};

SelfHealingEngine::SelfHealingEngine(WatchdogOptions options, EngineFactory factory, Hooks hooks,
                                     std::shared_ptr<Clock> clock)
    : options_(options), factory_(std::move(factory)), hooks_(std::move(hooks)), clock_(std::move(clock)) {
  clock_listener_ = clock_->AddAdvanceListener([this] {
    { std::lock_guard<std::mutex> lock(mu_); }  // a waiter between its check and its wait
    cv_.notify_all();
  });
}

absl::StatusOr<std::unique_ptr<SelfHealingEngine>> SelfHealingEngine::Create(WatchdogOptions options,
                                                                             EngineFactory factory, Hooks hooks,
                                                                             std::shared_ptr<Clock> clock) {
  if (absl::Status valid = ValidateWatchdogOptions(options); !valid.ok()) return valid;
  if (factory == nullptr) return absl::InvalidArgumentError("factory: must be set");
  if (clock == nullptr) clock = std::make_shared<RealClock>();
  std::unique_ptr<SelfHealingEngine> e(
      new SelfHealingEngine(options, std::move(factory), std::move(hooks), std::move(clock)));
  absl::StatusOr<EngineInstance> first = e->Build(0);
  if (!first.ok()) return first.status();
  e->model_info_ = first->engine->model_info();
  {
    std::lock_guard<std::mutex> lock(e->mu_);
    e->keepalive_ = std::move(first->keepalive);
    e->engine_ = std::move(first->engine);
    e->last_activity_ = e->clock_->Now();
  }
  e->watchdog_ = std::thread([p = e.get()] {
    p->WatchLoop();
    {
      std::lock_guard<std::mutex> lock(p->mu_);
      p->watchdog_exited_ = true;
    }
    p->cv_.notify_all();
  });
  return e;
}

SelfHealingEngine::~SelfHealingEngine() {
  clock_->RemoveAdvanceListener(clock_listener_);
  Shutdown();
  // A rebuild Shutdown left running (RebuildAbandoned) ends here; a server exits before this.
  if (watchdog_.joinable()) watchdog_.join();
  std::list<Reaper> reapers;
  {
    std::lock_guard<std::mutex> lock(reapers_mu_);
    reapers.swap(reapers_);
  }
  for (Reaper& r : reapers) r.thread.join();
}

bool SelfHealingEngine::WaitUntil(std::unique_lock<std::mutex>& lock, Clock::TimePoint deadline) {
  for (Clock::TimePoint now = clock_->Now(); !stopping_ && now < deadline; now = clock_->Now()) {
    cv_.wait_for(lock, std::min<Clock::Duration>(deadline - now, kMaxWait));
  }
  return !stopping_;
}

bool SelfHealingEngine::WaitNoStuckEngine(std::chrono::milliseconds timeout) {
  std::list<Reaper> finished;
  bool none_left = false;
  {
    std::unique_lock<std::mutex> lock(reapers_mu_);
    none_left = reapers_cv_.wait_for(lock, timeout, [this] {
      return std::all_of(reapers_.begin(), reapers_.end(), [](const Reaper& r) { return r.done; });
    });
    for (auto it = reapers_.begin(); it != reapers_.end();) {
      auto next = std::next(it);
      if (it->done) finished.splice(finished.end(), reapers_, it);
      it = next;
    }
  }
  for (Reaper& r : finished) r.thread.join();
  return none_left;
}

absl::StatusOr<EngineInstance> SelfHealingEngine::Build(int generation) {
  const Clock::TimePoint start = clock_->Now();
  absl::StatusOr<EngineInstance> built =
      factory_(generation, [this, generation](int32_t, const absl::Status& s) { OnStepEnd(generation, s); });
  if (!built.ok()) return built.status();
  absl::Status warm =
      WarmUpEngine(built->engine.get(), absl::StrCat("warmup-", generation), options_.warmup_timeout, *clock_);
  if (!warm.ok()) {
    Bury(std::move(built->engine), std::move(built->keepalive));
    return absl::UnavailableError(absl::StrCat("warm-up failed: ", warm.ToString()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  last_build_ = clock_->Now() - start;
  return built;
}

void SelfHealingEngine::OnStepEnd(int generation, const absl::Status& status) {
  last_beat_ns_ = SinceEpochNs(clock_->Now());
  if (status.ok() || absl::IsResourceExhausted(status)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (generation != generation_ || faulted_generation_ == generation) return;
    faulted_generation_ = generation;
    fault_ = absl::StrCat("engine step failed: ", status.ToString());
  }
  cv_.notify_all();
}

void SelfHealingEngine::EndWithoutEngine(const std::shared_ptr<Tracked>& t, absl::Status status, FinishReason reason) {
  RequestResult r;
  r.status = std::move(status);
  r.finish_reason = reason;
  ReportSent(*t, &r);
  Resolve(t, r);
}

void SelfHealingEngine::ReportSent(const Tracked& t, RequestResult* r) {
  std::lock_guard<std::mutex> lock(mu_);
  const Clock::TimePoint now = clock_->Now();
  auto ms = [](Clock::TimePoint from, Clock::TimePoint to) {
    return std::chrono::duration<double, std::milli>(to - from).count();
  };
  r->prompt_tokens = static_cast<int32_t>(t.request.input_ids.size());
  r->output_ids = t.streamed_ids;
  r->total_ms = ms(t.submitted, now);
  if (t.first_token) r->ttft_ms = ms(t.submitted, *t.first_token);
}

RequestCallbacks SelfHealingEngine::Wrap(const std::shared_ptr<Tracked>& t, int generation) {
  RequestCallbacks cb;
  cb.on_tokens = [this, t, generation](const std::vector<int32_t>& ids) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (t->generation != generation || t->done) return;
      if (!t->first_token) t->first_token = clock_->Now();
      if (!t->callbacks.replayable_after_tokens) {
        t->streamed = true;
        t->streamed_ids.insert(t->streamed_ids.end(), ids.begin(), ids.end());
      }
      last_activity_ = clock_->Now();
    }
    std::lock_guard<std::mutex> cb_lock(t->cb_mu);
    if (t->callbacks.on_tokens) t->callbacks.on_tokens(ids);
  };
  cb.on_done = [this, t, generation](const RequestResult& engine_result) {
    RequestResult result = engine_result;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (t->generation != generation || t->done) return;
      // A request of the failed batch: the watchdog requeues or fails it.
      if (faulted_generation_ == generation && !result.status.ok()) return;
      // A requeued request's times count from the client's submit: the outage is part of its wait.
      const double lost_ms = std::chrono::duration<double, std::milli>(t->engine_submitted - t->submitted).count();
      if (lost_ms > 0) {
        result.queue_ms += lost_ms;
        if (result.ttft_ms > 0) result.ttft_ms += lost_ms;
        result.total_ms += lost_ms;
      }
    }
    Resolve(t, result);
  };
  return cb;
}

void SelfHealingEngine::Resolve(const std::shared_ptr<Tracked>& t, const RequestResult& result) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (t->done) return;
    t->done = true;
    tracked_.erase(t->request.request_id);
    last_activity_ = clock_->Now();
    if (tracked_.empty()) idle_cv_.notify_all();
  }
  std::lock_guard<std::mutex> cb_lock(t->cb_mu);
  if (t->callbacks.on_done) t->callbacks.on_done(result);
}

absl::Status SelfHealingEngine::Submit(InferenceRequest request, RequestCallbacks callbacks) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopping_) return absl::UnavailableError("engine is shut down");
  if (draining_ && !request.admitted_before_drain) {
    return absl::UnavailableError("engine is draining; not accepting requests");
  }
  if (state_ == State::kRecovering) {
    // When to come back: the backoff left, then as long as the last build took.
    const auto left = std::max(Clock::Duration::zero(), rebuild_at_ - clock_->Now()) + last_build_;
    const int64_t retry_ms =
        std::clamp<int64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(left).count(), 200, 60'000);
    absl::Status restarting = absl::UnavailableError(
        absl::StrCat("engine is restarting after a fault (", reason_, "); retry after ", retry_ms, " ms"));
    SetRetryAfterMs(&restarting, retry_ms);
    return restarting;
  }
  if (state_ == State::kFailed) return absl::UnavailableError(reason_);
  if (tracked_.count(request.request_id) > 0) {
    return absl::AlreadyExistsError(absl::StrCat("request_id ", request.request_id, " is already in flight"));
  }
  auto t = std::make_shared<Tracked>();
  t->request = request;
  t->callbacks = std::move(callbacks);
  t->generation = generation_;
  t->submitted = t->engine_submitted = clock_->Now();
  absl::Status s = engine_->Submit(std::move(request), Wrap(t, generation_));
  if (!s.ok()) return s;
  if (tracked_.empty()) busy_since_ = clock_->Now();
  tracked_.emplace(t->request.request_id, t);
  return absl::OkStatus();
}

void SelfHealingEngine::Cancel(const std::string& request_id) {
  std::shared_ptr<InferenceEngine> engine;
  std::shared_ptr<Tracked> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tracked_.find(request_id);
    if (it == tracked_.end()) return;
    it->second->cancel_requested = true;
    if (it->second->generation < 0) {
      pending = it->second;
    } else {
      engine = engine_;
    }
  }
  if (pending != nullptr) {
    EndWithoutEngine(pending, absl::CancelledError("cancelled while waiting for the engine to restart"),
                     FinishReason::kCancelled);
  } else if (engine != nullptr) {
    engine->Cancel(request_id);
  }
}

void SelfHealingEngine::StartDrain() {
  std::shared_ptr<InferenceEngine> engine;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    engine = engine_;
  }
  if (engine != nullptr) engine->StartDrain();
}

bool SelfHealingEngine::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_for(lock, timeout, [this] { return tracked_.empty(); });
}

void SelfHealingEngine::Shutdown() {
  std::shared_ptr<InferenceEngine> engine;
  std::shared_ptr<void> keepalive;
  std::vector<std::shared_ptr<Tracked>> owed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [id, t] : tracked_) {
      if (t->generation < 0) owed.push_back(t);
    }
  }
  cv_.notify_all();
  // Requests waiting for a rebuild are in no engine: answered now, not once the model has loaded
  // again (minutes for a large checkpoint, past any drain timeout or pod grace period).
  for (auto& t : owed) {
    EndWithoutEngine(t, absl::UnavailableError("server shut down during an engine restart; retry the request"),
                     FinishReason::kError);
  }
  // The watchdog thread ends at once unless it is inside a rebuild (a model load, a warm-up):
  // waited for as long as a stuck engine is, then left running (RebuildAbandoned).
  if (watchdog_.joinable()) {
    std::unique_lock<std::mutex> lock(mu_);
    const bool exited = cv_.wait_for(lock, options_.shutdown_timeout, [this] { return watchdog_exited_; });
    lock.unlock();
    if (exited) {
      watchdog_.join();
    } else if (!rebuild_abandoned_.exchange(true)) {
      LogEvent(LogLevel::kError, "engine_shutdown_stuck", "",
               absl::StrCat("an engine rebuild did not end within ", options_.shutdown_timeout.count(),
                            " ms of shutdown; leaving it running"));
    }
  }
  std::vector<std::shared_ptr<Tracked>> left;
  {
    std::lock_guard<std::mutex> lock(mu_);
    engine = std::move(engine_);
    keepalive = std::move(keepalive_);
    for (auto& [id, t] : tracked_) left.push_back(t);
  }
  // What is still in flight ends first, UNAVAILABLE: the server ended it, not its client, so it is
  // retried elsewhere (the engine's own shutdown would end it CANCELLED, which clients do not retry).
  for (auto& t : left) {
    EndWithoutEngine(t, absl::UnavailableError("server shut down before the request finished"),
                     FinishReason::kCancelled);
  }
  if (engine == nullptr) return;
  // An engine torn down after an earlier fault (a stalled step) may still be inside that step: the
  // wait below is for it too, but it is not the serving engine that failed to stop.
  const bool earlier_stuck = !WaitNoStuckEngine(std::chrono::milliseconds(0));
  // Off this thread, as a faulted engine is: a step that never returns must not hold the exit.
  Bury(std::move(engine), std::move(keepalive));
  if (!WaitNoStuckEngine(options_.shutdown_timeout)) {
    if (earlier_stuck) {
      LogEvent(LogLevel::kWarn, "engine_shutdown_stuck", "",
               absl::StrCat("an engine torn down after an earlier fault is still inside its stalled step ",
                            options_.shutdown_timeout.count(), " ms into shutdown; leaving it running"));
    } else {
      LogEvent(LogLevel::kError, "engine_shutdown_stuck", "",
               absl::StrCat("the engine did not leave its step within ", options_.shutdown_timeout.count(),
                            " ms of shutdown; leaving it running"));
    }
  }
}

EngineStats SelfHealingEngine::stats() const {
  std::shared_ptr<InferenceEngine> engine;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kServing) engine = engine_;  // a faulted one being buried knows nothing owed
  }
  if (engine != nullptr) {
    EngineStats s = engine->stats();
    std::lock_guard<std::mutex> lock(mu_);
    last_batch_limit_ = s.batch_limit;
    last_max_batch_size_ = s.max_batch_size;
    AddCounts(carried_, &s);
    return s;
  }
  // No engine serving (a rebuild, a crash loop): the requests owed wait, nothing runs, and the
  // limits are the last engine's; an empty snapshot read as an idle pod to autoscalers and alerts.
  EngineStats s;
  std::lock_guard<std::mutex> lock(mu_);
  AddCounts(carried_, &s);
  for (const auto& [id, t] : tracked_) s.waiting += t->done ? 0 : 1;
  s.batch_limit = last_batch_limit_;
  s.max_batch_size = last_max_batch_size_;
  return s;
}

void SelfHealingEngine::AddCounts(const EngineStats& from, EngineStats* to) {
  to->oom_events += from.oom_events;
  to->preemptions += from.preemptions;
  to->steps += from.steps;
  to->finished += from.finished;
  to->prefix_cache_hit_tokens += from.prefix_cache_hit_tokens;
  to->prompt_tokens_scheduled += from.prompt_tokens_scheduled;
  to->schedule_ns += from.schedule_ns;
  to->executor_host_ns += from.executor_host_ns;
  to->device_wait_ns += from.device_wait_ns;
  to->commit_ns += from.commit_ns;
  to->device_busy_ns += from.device_busy_ns;
  to->device_idle_ns += from.device_idle_ns;
}

void SelfHealingEngine::Bury(std::shared_ptr<InferenceEngine> engine, std::shared_ptr<void> keepalive) {
  WaitNoStuckEngine(std::chrono::milliseconds(0));  // joins the reapers that finished
  ++graveyard_;
  std::lock_guard<std::mutex> lock(reapers_mu_);
  Reaper& reaper = reapers_.emplace_back();
  // A stalled engine thread cannot be interrupted: shut it down off the watchdog thread.
  reaper.thread = std::thread([this, &reaper, engine = std::move(engine), keepalive = std::move(keepalive)]() mutable {
    engine->Shutdown();
    engine.reset();
    keepalive.reset();  // the model after its engine
    --graveyard_;
    {
      std::lock_guard<std::mutex> lock(reapers_mu_);
      reaper.done = true;
    }
    reapers_cv_.notify_all();
  });
}

void SelfHealingEngine::WatchLoop() {
  const auto tick = std::clamp<std::chrono::milliseconds>(options_.stall_timeout / 8, std::chrono::milliseconds(5),
                                                          std::chrono::milliseconds(200));
  for (;;) {
    std::string why;
    bool canary = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Faults, shutdown and a fake clock's advances notify cv_; the tick covers a real clock.
      cv_.wait_for(lock, tick);
      if (stopping_) return;
      if (state_ != State::kServing) continue;
      const auto now = clock_->Now();
      if (faulted_generation_ == generation_) {
        why = fault_;
      } else if (!tracked_.empty()) {
        const Clock::TimePoint beat{std::chrono::nanoseconds(last_beat_ns_.load())};
        const auto since = now - std::max(beat, busy_since_);
        if (since > options_.stall_timeout) {
          why = absl::StrCat("engine stalled: no step finished for ",
                             std::chrono::duration_cast<std::chrono::milliseconds>(since).count(), " ms with ",
                             tracked_.size(),
                             " requests in flight (--stall-timeout-ms=", options_.stall_timeout.count(), ")");
        }
      } else if (options_.canary_interval.count() > 0 && !draining_ &&
                 now - last_activity_ > options_.canary_interval) {
        canary = true;
        last_activity_ = now;
      }
    }
    if (canary) {
      std::shared_ptr<InferenceEngine> engine;
      {
        std::lock_guard<std::mutex> lock(mu_);
        engine = engine_;
      }
      absl::Status s =
          WarmUpEngine(engine.get(), absl::StrCat("canary-", ++canaries_), options_.stall_timeout, *clock_);
      if (s.ok()) {
        LogEvent(LogLevel::kDebug, "canary_ok", "", "idle canary forward ok");
      } else if (!absl::IsUnavailable(s)) {  // UNAVAILABLE: draining or shut down meanwhile
        why = absl::StrCat("idle canary failed: ", s.ToString());
      }
    }
    if (!why.empty()) Recover(why);
  }
}

std::chrono::milliseconds SelfHealingEngine::Backoff(int failures) const {
  const auto delay = options_.backoff_initial * (int64_t{1} << std::clamp(failures - 1, 0, 20));
  return std::min<std::chrono::milliseconds>(delay, options_.backoff_max);
}

void SelfHealingEngine::Recover(const std::string& first_why) {
  std::string why = first_why;
  const auto fault_time = clock_->Now();
  // When the fault being handled happened: the backoff and the crash-loop window count from it,
  // not from when this thread got round to it (a fake clock may move in between).
  Clock::TimePoint failed_at = fault_time;
  std::vector<std::shared_ptr<Tracked>> requeue;
  std::vector<std::pair<std::shared_ptr<Tracked>, int>> fail;  // streamed already
  std::vector<std::shared_ptr<Tracked>> cancelled;             // cancelled on the failed engine
  int old_generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = State::kRecovering;
    reason_ = why;
    // Refusals from now on say when to come back: this fault's backoff (the loop below sets it
    // again for a failed rebuild).
    int in_window = 1;
    for (const Clock::TimePoint f : failures_) in_window += fault_time - f <= options_.window;
    rebuild_at_ = fault_time + Backoff(in_window);
    old_generation = generation_;
    for (auto& [id, t] : tracked_) {
      if (t->done) continue;
      t->generation = -1;  // stale for the old engine
      if (t->cancel_requested) {
        cancelled.push_back(t);
      } else if (t->streamed) {
        fail.emplace_back(t, 0);
      } else {
        requeue.push_back(t);
      }
    }
  }
  if (hooks_.on_health) hooks_.on_health(false);
  LogEvent(LogLevel::kError, "engine_fault", "", absl::StrCat("engine fault: ", why),
           {{"reason", why},
            {"generation", old_generation},
            {"requeued", requeue.size()},
            {"failed", fail.size()},
            {"cancelled", cancelled.size()}});
  for (auto& t : cancelled) {
    EndWithoutEngine(t, absl::CancelledError("cancelled; the engine failed before it acted on the cancel"),
                     FinishReason::kCancelled);
  }
  for (auto& [t, n] : fail) {
    EndWithoutEngine(t,
                     absl::UnavailableError(absl::StrCat("the engine failed while this request was streaming (", why,
                                                         "); it was not retried because output was already sent; "
                                                         "retry the request")),
                     FinishReason::kError);
  }
  {
    std::shared_ptr<InferenceEngine> engine;
    std::shared_ptr<void> keepalive;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine = std::move(engine_);
      keepalive = std::move(keepalive_);
    }
    // Its counts (steps, preemptions, prefix-cache tokens, phase times) carry on into the next
    // engine's: the metrics built from them stay monotone and lose nothing counted since their
    // last poll.
    if (engine != nullptr) {
      const EngineStats last = engine->stats();
      std::lock_guard<std::mutex> lock(mu_);
      AddCounts(last, &carried_);
    }
    Bury(std::move(engine), std::move(keepalive));
  }
  // The old engine is gone (no callback of it runs any more): each request it had started over
  // forgets what it was given, before the new engine gives it its ids from the first.
  for (auto& t : requeue) {
    std::lock_guard<std::mutex> cb_lock(t->cb_mu);
    if (t->callbacks.on_replay) t->callbacks.on_replay();
  }
  // The requests waiting for the rebuilt engine still end at their deadlines, through the backoff
  // and the reload: one with no deadline of its own but the server's (every HTTP request) was
  // answered only once the new engine ran, 6.7 s for a 2.5 s deadline behind a 6 s reload.
  auto earliest_deadline = [&] {  // with mu_ held
    Clock::TimePoint earliest = Clock::TimePoint::max();
    for (const auto& t : requeue) {
      if (!t->done) earliest = std::min(earliest, t->request.deadline);
    }
    return earliest;
  };
  auto end_expired = [&] {
    std::vector<std::shared_ptr<Tracked>> expired;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const Clock::TimePoint now = clock_->Now();
      for (const auto& t : requeue) {
        if (!t->done && t->request.deadline <= now) expired.push_back(t);
      }
    }
    for (const auto& t : expired) {
      EndWithoutEngine(t,
                       absl::DeadlineExceededError(absl::StrCat(
                           "the request's deadline passed while the engine was restarting after a fault (", why, ")")),
                       FinishReason::kDeadline);
    }
  };

  for (;;) {
    int failures = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = failed_at;
      failures_.push_back(now);
      while (!failures_.empty() && now - failures_.front() > options_.window) failures_.pop_front();
      failures = static_cast<int>(failures_.size());
      if (failures >= options_.max_failures) {
        state_ = State::kFailed;
        // Every client refused from now on reads this: the fault's first line only (a failed
        // rebuild's checkpoint report is many lines; engine_crash_loop and the faults before it
        // logged it whole), and the line after it when the first only introduces it ("cannot load
        // DIR:").
        const size_t first_end = why.find('\n');
        std::string last = why.substr(0, first_end);
        if (!last.empty() && last.back() == ':' && first_end != std::string::npos) {
          const size_t next_end = why.find('\n', first_end + 1);
          absl::StrAppend(
              &last, " ",
              why.substr(first_end + 1, next_end == std::string::npos ? std::string::npos : next_end - first_end - 1));
        }
        if (last.size() > 300) last = absl::StrCat(last.substr(0, 300), "...");
        reason_ = absl::StrCat("engine crash loop: ", failures, " faults within ", options_.window.count() / 1000,
                               " s; not restarting again (last: ", last, "); fix the cause and restart the server");
      }
      if (stopping_) {
        state_ = State::kFailed;
        reason_ = "server shut down during an engine restart";
      }
    }
    if (state_ == State::kFailed) {  // only this thread sets it
      std::string reason;
      bool shutting_down = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        reason = reason_;
        shutting_down = stopping_;
      }
      if (shutting_down) {
        LogEvent(LogLevel::kInfo, "log", "", absl::StrCat("engine rebuild left: ", reason));
      } else {
        LogEvent(LogLevel::kError, "engine_crash_loop", "", reason, {{"failures", failures}, {"last_fault", why}});
      }
      for (auto& t : requeue) {
        EndWithoutEngine(t, absl::UnavailableError(reason), FinishReason::kError);
      }
      if (!shutting_down && hooks_.on_crash_loop) hooks_.on_crash_loop(reason);
      return;
    }
    const std::chrono::milliseconds delay = Backoff(failures);
    LogEvent(LogLevel::kWarn, "engine_rebuild_scheduled", "",
             absl::StrCat("rebuilding the engine in ", delay.count(), " ms"),
             {{"backoff_ms", delay.count()}, {"failures_in_window", failures}});
    {
      std::unique_lock<std::mutex> lock(mu_);
      rebuild_at_ = failed_at + delay;
      bool stopping = false;
      for (;;) {  // the backoff, waking at each deadline on the way
        if (!WaitUntil(lock, std::min(failed_at + delay, earliest_deadline()))) {
          stopping = true;
          break;
        }
        if (clock_->Now() >= failed_at + delay) break;
        lock.unlock();
        end_expired();
        lock.lock();
      }
      if (stopping) continue;  // handled at the top
    }
    int generation = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation = generation_ + 1;
    }
    // The build (the checkpoint's reload, the warm-up) runs beside this thread, which ends the
    // requests whose deadlines pass meanwhile.
    absl::StatusOr<EngineInstance> built = absl::UnknownError("not built");
    try {
      std::future<absl::StatusOr<EngineInstance>> building =
          std::async(std::launch::async, [this, generation] { return Build(generation); });
      while (building.wait_for(kDeadlinePoll) != std::future_status::ready) end_expired();
      built = building.get();
    } catch (const std::system_error&) {  // no thread to be had: build here, deadlines after it
      built = Build(generation);
    }
    end_expired();
    bool stopping = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping = stopping_;
    }
    if (stopping) {  // Shutdown came during the build: nothing installs it (handled at the top)
      if (built.ok()) Bury(std::move(built->engine), std::move(built->keepalive));
      continue;
    }
    if (!built.ok()) {
      why = absl::StrCat("rebuild failed: ", built.status().ToString());
      failed_at = clock_->Now();
      LogEvent(LogLevel::kError, "engine_rebuild_failed", "", why, {{"generation", generation}});
      continue;
    }
    std::vector<std::pair<std::shared_ptr<Tracked>, absl::Status>> refused;
    {
      std::lock_guard<std::mutex> lock(mu_);
      generation_ = generation;
      engine_ = std::move(built->engine);
      keepalive_ = std::move(built->keepalive);
      for (auto& t : requeue) {
        if (t->done) continue;  // cancelled meanwhile
        t->generation = generation;
        t->engine_submitted = clock_->Now();
        InferenceRequest copy = t->request;
        absl::Status s = engine_->Submit(std::move(copy), Wrap(t, generation));
        if (!s.ok()) refused.emplace_back(t, s);
      }
      // A drain asked for during the rebuild starts once the requests it owes are back in: a
      // draining engine refuses submissions, and they were accepted before the drain.
      if (draining_) engine_->StartDrain();
      busy_since_ = clock_->Now();
      last_activity_ = busy_since_;
      state_ = State::kServing;
      reason_.clear();
    }
    for (auto& [t, s] : refused) {
      RequestResult r;
      r.status = s;
      r.finish_reason = FinishReason::kError;
      r.prompt_tokens = static_cast<int32_t>(t->request.input_ids.size());
      Resolve(t, r);
    }
    ++restarts_;
    if (hooks_.on_restart) hooks_.on_restart();
    bool draining = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      draining = draining_;
    }
    if (hooks_.on_health && !draining) hooks_.on_health(true);
    LogEvent(LogLevel::kInfo, "engine_restarted", "",
             absl::StrCat("engine rebuilt and serving again after ",
                          static_cast<int64_t>(MsBetween(fault_time, clock_->Now())), " ms"),
             {{"generation", generation},
              {"downtime_ms", MsBetween(fault_time, clock_->Now())},
              {"requeued", requeue.size() - refused.size()}});
    return;
  }
}

}  // namespace glmserve
