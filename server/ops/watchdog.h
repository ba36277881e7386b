// Self-healing engine: an InferenceEngine that owns the real one, watches its heartbeat, and on
// a fault (a step longer than the stall timeout, a step failing with something other than
// out-of-memory, a failed idle canary) goes NOT_SERVING, requeues the in-flight requests that
// have not streamed a token yet (the others end UNAVAILABLE so the client's retry policy
// applies), tears the engine down, builds a new one (reload, warm-up) after an exponential
// backoff, and goes SERVING again. After max_failures faults within `window` it stays
// NOT_SERVING and says why. LibTorch- and gRPC-free. Contract: docs/operations.md.
//
// Time comes from an injected Clock (runtime/engine/clock.h), as in the engine: with a FakeClock
// stall, backoff, crash-loop window and canary behaviour are tested without sleeping. Threads: one
// watchdog thread, and one reaper thread per torn-down engine (a stalled step cannot be
// interrupted, so it is shut down off the watchdog thread); all are owned and joined.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/engine/clock.h"

namespace glmserve {

struct WatchdogOptions {
  // A step (or, with work in flight, the gap between heartbeats) longer than this is a fault.
  // Must be > 0.
  std::chrono::milliseconds stall_timeout{60'000};
  // Delay before rebuild n (1-based, counted within `window`): initial * 2^(n-1), at most
  // backoff_max. Both must be >= 0 (0 = rebuild at once).
  std::chrono::milliseconds backoff_initial{500};
  std::chrono::milliseconds backoff_max{30'000};
  // This many faults within `window` and the engine is not rebuilt again (crash loop): it stays
  // NOT_SERVING and Submit answers UNAVAILABLE with the reason. Must be >= 1.
  int32_t max_failures = 5;
  // The sliding window over which faults are counted. Must be > 0.
  std::chrono::milliseconds window{600'000};
  // While no request is in flight, a 1-token forward every interval; 0 = off. Must be >= 0.
  std::chrono::milliseconds canary_interval{0};
  // Each new engine must finish a 2-token warm-up request within this, or the build fails
  // (UNAVAILABLE). Must be > 0.
  std::chrono::milliseconds warmup_timeout{300'000};
  // Shutdown waits this long for the engine's thread to leave its step; past it (a step that never
  // returns, a GPU hang) the engine is left behind (HasStuckEngine) and Shutdown returns. Must be
  // >= 0.
  std::chrono::milliseconds shutdown_timeout{5'000};
};

// INVALID_ARGUMENT naming the first bad field.
absl::Status ValidateWatchdogOptions(const WatchdogOptions& options);

// A built engine plus whatever must outlive it (the model runner), destroyed engine first.
struct EngineInstance {
  std::shared_ptr<void> keepalive;
  std::unique_ptr<InferenceEngine> engine;
};
// Builds engine number `generation` (0 = the first). `on_step_end` must be installed as
// EngineOptions::on_step_end (it is the heartbeat).
using EngineFactory = std::function<absl::StatusOr<EngineInstance>(
    int generation, std::function<void(int32_t, const absl::Status&)> on_step_end)>;

// Sends a 2-token request (a prompt step) and waits for it: a real forward pass. The request's deadline is
// `timeout` on `clock`; the wait gives up (DEADLINE_EXCEEDED) a second after it.
absl::Status WarmUpEngine(InferenceEngine* engine, const std::string& request_id, std::chrono::milliseconds timeout,
                          Clock& clock);

class SelfHealingEngine final : public InferenceEngine {
 public:
  struct Hooks {
    std::function<void(bool serving)> on_health;  // health status changes
    std::function<void()> on_restart;             // an engine was rebuilt and is serving
    // The engine gave up after a crash loop (no rebuild follows); not called for a shutdown.
    std::function<void(const std::string& reason)> on_crash_loop;
  };
  // Validates `options` (INVALID_ARGUMENT), then builds and warms engine 0; its error is returned
  // as is. Health is reported SERVING by the caller (the first time); later transitions go
  // through hooks.on_health. `clock` null = RealClock.
  static absl::StatusOr<std::unique_ptr<SelfHealingEngine>> Create(WatchdogOptions options, EngineFactory factory,
                                                                   Hooks hooks, std::shared_ptr<Clock> clock = nullptr);
  // Shutdown(), then joins every reaper: waits for engines still inside a stalled step (serve
  // exits with std::_Exit instead when HasStuckEngine()).
  ~SelfHealingEngine() override;

  absl::Status Submit(InferenceRequest request, RequestCallbacks callbacks) override;
  void Cancel(const std::string& request_id) override;
  void StartDrain() override;
  bool WaitIdle(std::chrono::milliseconds timeout) override;
  void Shutdown() override;
  const ModelInfo& model_info() const override { return model_info_; }
  EngineStats stats() const override;

  int64_t restarts() const { return restarts_.load(); }
  // True while an engine torn down after a stall has not finished shutting down, or once Shutdown
  // left a rebuild running (RebuildAbandoned): a thread the server cannot join in time.
  bool HasStuckEngine() const { return graveyard_.load() > 0 || rebuild_abandoned_.load(); }
  // Shutdown returned while a rebuild (model load, warm-up) went on: the server exits without
  // waiting for it (HasStuckEngine), the destructor would.
  bool RebuildAbandoned() const { return rebuild_abandoned_.load(); }
  // Waits (real time) until no torn-down engine is still shutting down; true when none is.
  bool WaitNoStuckEngine(std::chrono::milliseconds timeout);

 private:
  struct Tracked;
  enum class State { kServing, kRecovering, kFailed };

  SelfHealingEngine(WatchdogOptions options, EngineFactory factory, Hooks hooks, std::shared_ptr<Clock> clock);
  absl::StatusOr<EngineInstance> Build(int generation);
  RequestCallbacks Wrap(const std::shared_ptr<Tracked>& t, int generation);
  void OnStepEnd(int generation, const absl::Status& status);
  void WatchLoop();
  void Recover(const std::string& why);
  // The wait before rebuild n (1-based) of the window: WatchdogOptions::backoff_initial doubling.
  std::chrono::milliseconds Backoff(int failures) const;
  void Resolve(const std::shared_ptr<Tracked>& t, const RequestResult& result);
  // A request the server ends without the engine's result (a fault after streaming, shutdown):
  // what its client was sent and when (its log line and token counters say so, not 0).
  void ReportSent(const Tracked& t, RequestResult* r);
  // Resolves `t` with `status` and what its client was sent (ReportSent): no engine answers it.
  void EndWithoutEngine(const std::shared_ptr<Tracked>& t, absl::Status status, FinishReason reason);
  void Bury(std::shared_ptr<InferenceEngine> engine, std::shared_ptr<void> keepalive);
  // Adds `from`'s cumulative counts (not its gauges) to `to`'s.
  static void AddCounts(const EngineStats& from, EngineStats* to);
  // Waits on cv_ until `deadline` on clock_ or until stopping_; false when stopping.
  bool WaitUntil(std::unique_lock<std::mutex>& lock, Clock::TimePoint deadline);

  const WatchdogOptions options_;
  const EngineFactory factory_;
  const Hooks hooks_;
  const std::shared_ptr<Clock> clock_;
  int64_t clock_listener_ = 0;
  ModelInfo model_info_;

  mutable std::mutex mu_;
  std::condition_variable cv_;                                         // wakes the watchdog
  std::condition_variable idle_cv_;                                    // wakes WaitIdle
  std::shared_ptr<InferenceEngine> engine_;                            // guarded by mu_; null while recovering
  std::shared_ptr<void> keepalive_;                                    // guarded by mu_
  int generation_ = 0;                                                 // guarded by mu_
  State state_ = State::kServing;                                      // guarded by mu_
  std::string reason_;                                                 // guarded by mu_: why not serving
  bool draining_ = false;                                              // guarded by mu_
  bool stopping_ = false;                                              // guarded by mu_
  int faulted_generation_ = -1;                                        // guarded by mu_
  std::string fault_;                                                  // guarded by mu_
  std::unordered_map<std::string, std::shared_ptr<Tracked>> tracked_;  // guarded by mu_
  // The last engine's batch limits (stats()), reported while none runs; guarded by mu_.
  mutable int32_t last_batch_limit_ = 0;
  mutable int32_t last_max_batch_size_ = 0;
  Clock::TimePoint busy_since_;            // guarded by mu_
  Clock::TimePoint rebuild_at_;            // guarded by mu_; when the pending rebuild starts (after its backoff)
  Clock::Duration last_build_{};           // guarded by mu_; how long the last engine took to build and warm up
  Clock::TimePoint last_activity_;         // guarded by mu_
  std::deque<Clock::TimePoint> failures_;  // guarded by mu_
  // Nanoseconds of clock_'s time_since_epoch at the last step end: written on engine threads
  // without mu_, so a step end never waits for the watchdog.
  std::atomic<int64_t> last_beat_ns_{0};
  std::atomic<int64_t> restarts_{0};
  std::atomic<int> graveyard_{0};
  std::atomic<bool> rebuild_abandoned_{false};
  // The cumulative counts of the engines torn down so far (stats() adds them to the live one's).
  EngineStats carried_;           // guarded by mu_
  bool watchdog_exited_ = false;  // guarded by mu_; WatchLoop returned
  int64_t canaries_ = 0;          // watchdog thread only
  std::thread watchdog_;
  // One per torn-down engine; finished ones are joined when the next is started and by
  // WaitNoStuckEngine, the rest by the destructor.
  struct Reaper {
    std::thread thread;
    bool done = false;  // guarded by reapers_mu_
  };
  std::mutex reapers_mu_;
  std::condition_variable reapers_cv_;
  std::list<Reaper> reapers_;  // guarded by reapers_mu_; a list, so a running reaper's entry stays put
};

}  // namespace glmserve
