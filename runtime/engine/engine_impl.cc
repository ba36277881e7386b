#include "runtime/engine/engine_impl.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"

namespace glmserve {
namespace {

struct SubmitCommand {
  InferenceRequest request;
  RequestCallbacks callbacks;
  Clock::TimePoint submit_time;
};
struct CancelCommand {
  std::string request_id;
};
using Command = std::variant<SubmitCommand, CancelCommand>;

class EngineImpl final : public InferenceEngine {
 public:
  EngineImpl(EngineOptions options, std::unique_ptr<StepExecutor> executor, ModelInfo model_info,
             std::shared_ptr<Clock> clock)
      : options_(std::move(options)),
        executor_(std::move(executor)),
        model_info_(std::move(model_info)),
        clock_(std::move(clock)) {}

  absl::Status Init() {
    SchedulerHooks hooks;
    hooks.on_first_admit = [this](const std::string&) {
      std::lock_guard<std::mutex> lock(mu_);
      --queued_;
    };
    hooks.on_request_finished = [this](const std::string& id, const RequestResult& result, bool was_admitted) {
      OnFinished(id, result, was_admitted);
    };
    hooks.on_batch_limit_change = [this](int32_t old_limit, int32_t new_limit) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        batch_limit_ = new_limit;
      }
      if (options_.on_batch_limit_change) options_.on_batch_limit_change(old_limit, new_limit);
    };
    if (options_.on_step_end) hooks.on_step_end = options_.on_step_end;
    auto scheduler =
        Scheduler::Create(options_.scheduler, executor_.get(), clock_.get(), model_info_, std::move(hooks));
    if (!scheduler.ok()) return scheduler.status();
    scheduler_ = std::move(scheduler).value();
    limits_ = scheduler_->limits();
    model_info_.kv_capacity_tokens = int64_t{limits_.num_blocks} * limits_.block_size;
    batch_limit_ = options_.scheduler.max_batch_size;
    stats_ = scheduler_->stats();
    listener_ = clock_->AddAdvanceListener([this] { Wake(); });
    thread_ = std::thread([this] { Loop(); });
    return absl::OkStatus();
  }

  ~EngineImpl() override {
    Shutdown();
    clock_->RemoveAdvanceListener(listener_);
  }

  absl::Status Submit(InferenceRequest request, RequestCallbacks callbacks) override {
    absl::Status valid = ValidateRequest(request, limits_);
    if (!valid.ok()) return valid;
    const Clock::TimePoint now = clock_->Now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return absl::UnavailableError("engine is shut down");
      if (draining_ && !request.admitted_before_drain) {
        return absl::UnavailableError("engine is draining; not accepting requests");
      }
      if (!request.request_id.empty() && in_flight_ids_.count(request.request_id) > 0) {
        return absl::AlreadyExistsError(absl::StrCat("request_id ", request.request_id, " is already in flight"));
      }
      // Requests the next step will admit into free batch slots do not wait: a burst that arrives
      // within one step is refused only past the slots it will fill and the waiting queue.
      const int32_t free_slots = std::max(0, batch_limit_ - (in_flight_ - queued_));
      if (queued_ >= options_.max_queued_requests + free_slots) {
        // Estimated time for the running batch to free enough slots for this queue.
        const double slots = std::max(1, batch_limit_);
        const double wait_ms = ema_service_ms_ * (1.0 + static_cast<double>(queued_) / slots);
        const int64_t retry_ms = std::clamp<int64_t>(static_cast<int64_t>(wait_ms), 10, 60000);
        absl::Status full = absl::ResourceExhaustedError(absl::StrCat(
            "waiting queue is full (", queued_ - free_slots, " requests queued beyond the batch's free slots, ",
            "at most ", options_.max_queued_requests, ": serve's --max-queue); retry after ", retry_ms, " ms"));
        SetRetryAfterMs(&full, retry_ms);
        return full;
      }
      ++queued_;
      ++in_flight_;
      if (!request.request_id.empty()) in_flight_ids_.insert(request.request_id);
      inbox_.push_back(SubmitCommand{std::move(request), std::move(callbacks), now});
    }
    cv_.notify_one();  // outside the lock
    return absl::OkStatus();
  }

  void Cancel(const std::string& request_id) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_ || in_flight_ids_.count(request_id) == 0) return;
      // At most one pending cancel per in-flight id keeps the inbox bounded.
      if (!cancel_requested_.insert(request_id).second) return;
      inbox_.push_back(CancelCommand{request_id});
    }
    cv_.notify_one();
  }

  void StartDrain() override {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }

  bool WaitIdle(std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    return idle_cv_.wait_for(lock, timeout, [this] { return in_flight_ == 0; });
  }

  void Shutdown() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_one();
    std::lock_guard<std::mutex> join_lock(join_mu_);
    if (thread_.joinable()) thread_.join();
  }

  const ModelInfo& model_info() const override { return model_info_; }

  EngineStats stats() const override {
    std::lock_guard<std::mutex> lock(stats_mu_);
    return stats_;
  }

 private:
  void Wake() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      wake_ = true;
    }
    cv_.notify_one();
  }

  // Engine thread, after on_done. Publishes stats first so WaitIdle() callers see them settled.
  void OnFinished(const std::string& id, const RequestResult& result, bool was_admitted) {
    if (scheduler_ != nullptr) PublishStats();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!was_admitted) --queued_;
      --in_flight_;
      if (!id.empty()) {
        in_flight_ids_.erase(id);
        cancel_requested_.erase(id);
      }
      if (result.status.ok()) {
        ema_service_ms_ = 0.9 * ema_service_ms_ + 0.1 * (result.total_ms - result.queue_ms);
      }
      if (in_flight_ != 0) return;
    }
    idle_cv_.notify_all();
  }

  void PublishStats() {
    EngineStats st = scheduler_->stats();
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_ = st;
  }

  void Loop() {
    for (;;) {
      std::vector<Command> commands;
      bool stop = false;
      {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
          if (!inbox_.empty() || stopping_ || wake_) break;
          const Clock::TimePoint now = clock_->Now();
          if (scheduler_->ReadyToStep(now)) break;
          const Clock::TimePoint next = scheduler_->NextWakeTime(now);
          if (next == Clock::TimePoint::max()) {
            cv_.wait(lock);
          } else {
            // A fake clock does not move while we wait; its advance listener wakes us.
            cv_.wait_for(lock, std::min<Clock::Duration>(next - now, std::chrono::seconds(1)));
          }
        }
        wake_ = false;
        commands.swap(inbox_);
        stop = stopping_;
      }
      for (Command& command : commands) {
        if (auto* submit = std::get_if<SubmitCommand>(&command)) {
          const std::string id = submit->request.request_id;
          RequestCallbacks callbacks = submit->callbacks;  // kept in case Add refuses
          absl::Status s =
              scheduler_->Add(std::move(submit->request), std::move(submit->callbacks), submit->submit_time);
          if (!s.ok()) {  // Submit validated with the same limits, so this should not happen
            RequestResult result;
            result.status = s;
            result.finish_reason = FinishReason::kError;
            if (callbacks.on_done) callbacks.on_done(result);
            OnFinished(id, result, /*was_admitted=*/false);
          }
        } else {
          scheduler_->Cancel(std::get<CancelCommand>(command).request_id);
        }
      }
      if (stop) {
        scheduler_->CancelAll(absl::CancelledError("engine shut down"));
        PublishStats();
        return;
      }
      scheduler_->RunOnce();
      PublishStats();
    }
  }

  const EngineOptions options_;
  const std::unique_ptr<StepExecutor> executor_;
  ModelInfo model_info_;  // kv_capacity_tokens set by Init, then constant
  const std::shared_ptr<Clock> clock_;
  std::unique_ptr<Scheduler> scheduler_;  // engine thread only (after Init)
  RequestLimits limits_;                  // immutable after Init
  int64_t listener_ = 0;
  std::thread thread_;
  std::mutex join_mu_;

  mutable std::mutex mu_;
  std::condition_variable cv_;       // wakes the engine thread
  std::condition_variable idle_cv_;  // wakes WaitIdle
  std::vector<Command> inbox_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  int32_t queued_ ABSL_GUARDED_BY(mu_) = 0;     // accepted, never admitted, not finished
  int32_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // accepted, on_done not yet returned
  int32_t batch_limit_ ABSL_GUARDED_BY(mu_) = 1;
  double ema_service_ms_ ABSL_GUARDED_BY(mu_) = 100.0;
  std::unordered_set<std::string> in_flight_ids_ ABSL_GUARDED_BY(mu_);
  std::unordered_set<std::string> cancel_requested_ ABSL_GUARDED_BY(mu_);

  mutable std::mutex stats_mu_;
  EngineStats stats_;
};

}  // namespace

absl::Status ValidateEngineOptions(const EngineOptions& options) {
  absl::Status s = ValidateSchedulerOptions(options.scheduler);
  if (!s.ok()) return s;
  if (options.max_queued_requests < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queued_requests must be >= 1, got ", options.max_queued_requests));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateInferenceEngine(EngineOptions options,
                                                                       std::unique_ptr<StepExecutor> executor,
                                                                       ModelInfo model_info,
                                                                       std::shared_ptr<Clock> clock) {
  absl::Status s = ValidateEngineOptions(options);
  if (!s.ok()) return s;
  if (executor == nullptr) return absl::InvalidArgumentError("executor is null");
  if (clock == nullptr) clock = std::make_shared<RealClock>();
  auto engine =
      std::make_unique<EngineImpl>(std::move(options), std::move(executor), std::move(model_info), std::move(clock));
  s = engine->Init();
  if (!s.ok()) return s;
  return std::unique_ptr<InferenceEngine>(std::move(engine));
}

}  // namespace glmserve
