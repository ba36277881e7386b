// SelfHealingEngine (server/ops/watchdog.h) over the real engine and tests/engine's FakeExecutor:
// faults are the scheduler's injected ones and the executor's gate; no gRPC, no LibTorch, no
// model files. Time is a FakeClock shared by the watchdog and its engines: the tests advance it
// and wait for events (a request's end, a health change, a restart), never for time to pass.
#include "server/ops/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/engine/clock.h"
#include "runtime/engine/engine_impl.h"
#include "server/ops/logging.h"
#include "tests/engine/fake_executor.h"
#include "tests/engine/test_util.h"

namespace glmserve {
namespace {

using namespace std::chrono_literals;

// Bounds every wait for an event, so a broken watchdog fails the test instead of hanging it.
constexpr auto kEventTimeout = 20s;

struct Outcome {
  absl::Status status;
  size_t tokens = 0;
  size_t streamed = 0;
  double queue_ms = 0;  // as the result says
  double total_ms = 0;
  int replays = 0;  // on_replay calls (`streamed` counts from the last)
};

class Harness {
 public:
  // `faults(generation)` gives each engine its fault injection.
  explicit Harness(std::function<FaultInjectionOptions(int)> faults, WatchdogOptions w = Defaults()) {
    ConfigureLogging("error", "text").IgnoreError();
    EngineFactory factory =
        [this, faults](int generation,
                       std::function<void(int32_t, const absl::Status&)> beat) -> absl::StatusOr<EngineInstance> {
      std::function<void(int)> before;
      std::function<absl::Status(int)> build_error;
      {
        std::lock_guard<std::mutex> lock(mu_);
        before = before_build_;
        build_error = build_error_;
      }
      if (before) before(generation);
      if (build_error) {
        if (absl::Status s = build_error(generation); !s.ok()) return s;
      }
      EngineOptions o;
      o.scheduler.max_batch_size = 8;
      o.scheduler.faults = faults(generation);
      o.scheduler.log = [](const std::string&) {};
      o.on_step_end = beat;
      auto executor = std::make_unique<testing::FakeExecutor>(4, 256, 1000);
      {
        std::lock_guard<std::mutex> lock(mu_);
        executors_[generation] = executor.get();
      }
      auto e = CreateInferenceEngine(o, std::move(executor), testing::TestModelInfo(), clock_);
      if (!e.ok()) return e.status();
      EngineInstance instance;
      instance.engine = std::move(*e);
      return instance;
    };
    SelfHealingEngine::Hooks hooks;
    hooks.on_health = [this](bool serving) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        health_.push_back(serving);
      }
      cv_.notify_all();
    };
    hooks.on_restart = [this] {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++restarts_seen_;
      }
      cv_.notify_all();
    };
    auto e = SelfHealingEngine::Create(w, factory, hooks, clock_);
    EXPECT_TRUE(e.ok()) << e.status();
    if (e.ok()) engine_ = std::move(*e);
  }
  static WatchdogOptions Defaults() {
    WatchdogOptions w;
    w.stall_timeout = 300ms;
    w.backoff_initial = 0ms;  // rebuild at once; BackoffWaitsForTheClock sets its own
    w.max_failures = 3;
    w.warmup_timeout = 5s;
    return w;
  }
  // Submits; the future resolves at on_done.
  std::future<Outcome> Run(const std::string& id, bool stream, int n = 8,
                           Clock::TimePoint deadline = Clock::TimePoint::max()) {
    InferenceRequest r;
    r.request_id = id;
    r.deadline = deadline;
    r.input_ids = {1, 2, 3};
    r.params.max_new_tokens = n;
    r.params.min_new_tokens = n;
    auto done = std::make_shared<std::promise<Outcome>>();
    auto streamed = std::make_shared<std::atomic<size_t>>(0);
    auto replays = std::make_shared<std::atomic<int>>(0);
    RequestCallbacks cb;
    cb.on_tokens = [streamed](const std::vector<int32_t>& ids) { *streamed += ids.size(); };
    cb.replayable_after_tokens = !stream;
    cb.on_replay = [streamed, replays] {
      *streamed = 0;
      ++*replays;
    };
    cb.on_done = [done, streamed, replays](const RequestResult& res) {
      done->set_value(
          Outcome{res.status, res.output_ids.size(), streamed->load(), res.queue_ms, res.total_ms, replays->load()});
    };
    absl::Status s = engine_->Submit(std::move(r), std::move(cb));
    if (!s.ok()) done->set_value(Outcome{s, 0, 0});
    return done->get_future();
  }
  std::vector<bool> health() {
    std::lock_guard<std::mutex> lock(mu_);
    return health_;
  }
  // Waits until `n` health changes were reported.
  bool WaitHealthChanges(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kEventTimeout, [&] { return health_.size() >= n; });
  }
  bool WaitRestarts(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kEventTimeout, [&] { return restarts_seen_ >= n; });
  }
  testing::FakeExecutor* executor(int generation) {
    std::lock_guard<std::mutex> lock(mu_);
    return executors_.at(generation);
  }
  SelfHealingEngine& engine() { return *engine_; }
  // Runs at the start of each engine build (a slow model load, a build that blocks).
  void set_before_build(std::function<void(int)> before) {
    std::lock_guard<std::mutex> lock(mu_);
    before_build_ = std::move(before);
  }
  // Each engine build fails with what this returns, where not OK (a checkpoint gone since start).
  void set_build_error(std::function<absl::Status(int)> error) {
    std::lock_guard<std::mutex> lock(mu_);
    build_error_ = std::move(error);
  }
  FakeClock& clock() { return *clock_; }

 private:
  std::shared_ptr<FakeClock> clock_ = std::make_shared<FakeClock>();
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> health_;
  int restarts_seen_ = 0;
  std::map<int, testing::FakeExecutor*> executors_;  // owned by the engines
  std::function<void(int)> before_build_;
  std::function<absl::Status(int)> build_error_;
  std::unique_ptr<SelfHealingEngine> engine_;  // last: destroyed first
};

Outcome Get(std::future<Outcome>& f) {
  EXPECT_EQ(f.wait_for(kEventTimeout), std::future_status::ready);
  return f.get();
}

TEST(WatchdogTest, ExceptionRebuildsRequeuesUnaryAndFailsStreamedOnes) {
  Harness h([](int gen) {
    FaultInjectionOptions f;
    if (gen == 0) f.throw_on_step = 6;  // warm-up is step 1; both requests are decoding by then
    return f;
  });
  // "u" alone in step 2 and "s" joining at step 3: "s" has streamed tokens when step 6 throws.
  h.executor(0)->CloseGate();
  auto unary = h.Run("u", /*stream=*/false);
  ASSERT_TRUE(h.executor(0)->WaitBlockedAtGate(kEventTimeout));
  auto streamed = h.Run("s", /*stream=*/true);
  h.executor(0)->Open();
  Outcome u = Get(unary), s = Get(streamed);
  EXPECT_TRUE(u.status.ok()) << u.status;
  EXPECT_EQ(u.tokens, 8u) << "rerun from scratch on the new engine";
  // Told before the rerun, whose ids its on_tokens then saw from the first: what an observer
  // derived from the failed run's (stop strings' decoded text) starts over.
  EXPECT_EQ(u.replays, 1);
  EXPECT_EQ(u.streamed, 8u);
  EXPECT_EQ(s.replays, 0);
  EXPECT_TRUE(absl::IsUnavailable(s.status)) << s.status;
  EXPECT_NE(s.status.message().find("already sent"), absl::string_view::npos) << s.status;
  EXPECT_GT(s.streamed, 0u);
  EXPECT_EQ(s.tokens, s.streamed) << "the failure result carries the ids the client was sent";
  // The requeued request may finish on the new engine before the rebuild is counted.
  ASSERT_TRUE(h.WaitRestarts(1));
  EXPECT_EQ(h.engine().restarts(), 1);
  ASSERT_TRUE(h.WaitHealthChanges(2));
  EXPECT_EQ(h.health(), (std::vector<bool>{false, true}));
  auto after = h.Run("after", false);
  EXPECT_TRUE(Get(after).status.ok());
  // The torn-down engine's counts carry on (metrics built from them never drop): prompt tokens
  // admitted over both engines, 3 a request: "u" twice, "s", "after"; and each engine's 2-token
  // warm-up. The new engine alone saw 3 + 3 + 2.
  EXPECT_EQ(h.engine().stats().prompt_tokens_scheduled, 4 * 3 + 2 * 2);
}

TEST(WatchdogTest, StallPastTheTimeoutRebuildsWithoutWaitingForTheStuckStep) {
  Harness h([](int) { return FaultInjectionOptions(); });
  h.executor(0)->CloseGate();  // the next step of engine 0 hangs until Open()
  auto a = h.Run("a", false), b = h.Run("b", false);
  ASSERT_TRUE(h.executor(0)->WaitBlockedAtGate(kEventTimeout));
  h.clock().Advance(299ms);
  EXPECT_EQ(h.engine().restarts(), 0) << "not a stall yet";
  h.clock().Advance(2ms);
  EXPECT_TRUE(Get(a).status.ok());
  EXPECT_TRUE(Get(b).status.ok());
  ASSERT_TRUE(h.WaitRestarts(1));
  EXPECT_EQ(h.engine().restarts(), 1);
  EXPECT_TRUE(h.engine().HasStuckEngine()) << "engine 0 is still inside its step";
  EXPECT_FALSE(h.engine().WaitNoStuckEngine(0ms));
  h.executor(0)->Open();
  EXPECT_TRUE(h.engine().WaitNoStuckEngine(kEventTimeout)) << "the stalled engine is shut down once its step returns";
  EXPECT_FALSE(h.engine().HasStuckEngine());
}

// A client that cancels while the engine is stuck: the cancel goes to the stuck engine, which never
// acts on it. The rebuild must end that request CANCELLED, not run it again on the new engine for
// a client that has gone (it generated every max_new_tokens and held a drain until its timeout).
TEST(WatchdogTest, ACancelTheStuckEngineNeverSawEndsTheRequestAfterTheRebuild) {
  Harness h([](int) { return FaultInjectionOptions(); });
  h.executor(0)->CloseGate();
  auto kept = h.Run("kept", false), gone = h.Run("gone", false, /*n=*/64);
  ASSERT_TRUE(h.executor(0)->WaitBlockedAtGate(kEventTimeout));
  h.engine().Cancel("gone");
  h.clock().Advance(301ms);  // a stall: the engine is rebuilt
  Outcome g = Get(gone);
  EXPECT_TRUE(absl::IsCancelled(g.status)) << g.status;
  EXPECT_EQ(g.tokens, 0u) << "not run again on the new engine";
  EXPECT_EQ(g.replays, 0);
  Outcome k = Get(kept);
  EXPECT_TRUE(k.status.ok()) << k.status;
  EXPECT_EQ(k.tokens, 8u) << "the request not cancelled is rerun";
  ASSERT_TRUE(h.WaitRestarts(1));
  h.executor(0)->Open();
  EXPECT_TRUE(h.engine().WaitNoStuckEngine(kEventTimeout));
}

// Shutdown with a request in flight: it ends UNAVAILABLE (retryable: the server ended it, not its
// client); an engine inside a step that does not return is left behind after shutdown_timeout
// instead of holding Shutdown (and the process's exit) until it does.
TEST(WatchdogTest, ShutdownAnswersInFlightUnavailableAndLeavesAStuckStepBehind) {
  WatchdogOptions w = Harness::Defaults();
  w.stall_timeout = 3600s;  // the clock does not move here: no stall is seen
  w.shutdown_timeout = 50ms;
  Harness h([](int) { return FaultInjectionOptions(); }, w);
  h.executor(0)->CloseGate();  // the request's step hangs until Open()
  auto a = h.Run("a", false);
  ASSERT_TRUE(h.executor(0)->WaitBlockedAtGate(kEventTimeout));
  auto shutdown = std::async(std::launch::async, [&h] { h.engine().Shutdown(); });
  EXPECT_EQ(shutdown.wait_for(kEventTimeout), std::future_status::ready) << "Shutdown waited for the stuck step";
  const Outcome out = Get(a);
  EXPECT_TRUE(absl::IsUnavailable(out.status)) << out.status;
  EXPECT_TRUE(h.engine().HasStuckEngine());
  h.executor(0)->Open();
  EXPECT_TRUE(h.engine().WaitNoStuckEngine(kEventTimeout)) << "shut down once its step returned";
}

// A streaming request that shutdown ends: its result says what its client was sent (the request log
// and token counters; they said 0 tokens in 0 ms).
// SIGTERM while the model loads again after a fault: the requests owed are answered at once
// (UNAVAILABLE, retryable elsewhere) and Shutdown returns after shutdown_timeout, leaving the load
// behind (the server then exits without joining it), instead of waiting minutes for the load.
TEST(WatchdogTest, ShutdownDuringARebuildAnswersWhatIsOwedWithoutWaitingForTheLoad) {
  WatchdogOptions w = Harness::Defaults();
  w.shutdown_timeout = 100ms;
  Harness h(
      [](int gen) {
        FaultInjectionOptions f;
        if (gen == 0) f.throw_on_step = 3;
        return f;
      },
      w);
  std::promise<void> loading, release;
  std::shared_future<void> released = release.get_future().share();
  h.set_before_build([&loading, released](int generation) {
    if (generation != 1) return;
    loading.set_value();
    released.wait();  // the load that would take minutes
  });
  auto owed = h.Run("owed", /*stream=*/false, 16);
  ASSERT_EQ(loading.get_future().wait_for(kEventTimeout), std::future_status::ready);
  const auto start = std::chrono::steady_clock::now();
  h.engine().Shutdown();
  const auto took = std::chrono::steady_clock::now() - start;
  Outcome o = Get(owed);
  EXPECT_TRUE(absl::IsUnavailable(o.status)) << o.status;
  EXPECT_NE(o.status.message().find("shut down during an engine restart"), absl::string_view::npos) << o.status;
  EXPECT_LT(took, 5s) << "Shutdown waited for the rebuild";
  EXPECT_TRUE(h.engine().RebuildAbandoned());
  EXPECT_TRUE(h.engine().HasStuckEngine());
  release.set_value();  // the destructor then joins the rebuild, which installs nothing
}

TEST(WatchdogTest, ShutdownReportsWhatAStreamWasSent) {
  WatchdogOptions w = Harness::Defaults();
  w.stall_timeout = 3600s;
  w.shutdown_timeout = 50ms;
  Harness h([](int) { return FaultInjectionOptions(); }, w);
  auto streamed = std::make_shared<std::atomic<size_t>>(0);
  auto done = std::make_shared<std::promise<RequestResult>>();
  InferenceRequest r;
  r.request_id = "s";
  r.input_ids = {1, 2, 3};
  r.params.max_new_tokens = r.params.min_new_tokens = 1000;
  RequestCallbacks cb;
  testing::FakeExecutor* executor = h.executor(0);
  cb.on_tokens = [streamed, executor](const std::vector<int32_t>& ids) {
    if ((*streamed += ids.size()) >= 3) executor->CloseGate();  // the step after the third token hangs
  };
  cb.replayable_after_tokens = false;
  cb.on_done = [done](const RequestResult& res) { done->set_value(res); };
  ASSERT_TRUE(h.engine().Submit(std::move(r), std::move(cb)).ok());
  ASSERT_TRUE(executor->WaitBlockedAtGate(kEventTimeout));
  h.clock().Advance(7ms);
  auto shutdown = std::async(std::launch::async, [&h] { h.engine().Shutdown(); });
  std::future<RequestResult> result = done->get_future();
  ASSERT_EQ(result.wait_for(kEventTimeout), std::future_status::ready);
  const RequestResult res = result.get();
  EXPECT_TRUE(absl::IsUnavailable(res.status)) << res.status;
  EXPECT_GE(streamed->load(), 3u);
  EXPECT_EQ(res.output_ids.size(), streamed->load());
  EXPECT_EQ(res.prompt_tokens, 3);
  EXPECT_GE(res.total_ms, 7.0);
  EXPECT_LE(res.ttft_ms, res.total_ms - 7.0);
  executor->Open();
  EXPECT_EQ(shutdown.wait_for(kEventTimeout), std::future_status::ready);
}

TEST(WatchdogTest, CrashLoopStaysNotServingAndSaysWhy) {
  Harness h([](int) {
    FaultInjectionOptions f;
    f.throw_on_step = 2;  // every engine: warm-up is step 1, the first real step throws
    return f;
  });
  // A unary request that never streamed is requeued on every rebuilt engine, so it sees the
  // whole loop: 3 faults, 2 rebuilds, then the give-up.
  auto r = h.Run("r", false, 2);
  Outcome o = Get(r);
  EXPECT_TRUE(absl::IsUnavailable(o.status)) << o.status;
  EXPECT_NE(o.status.message().find("crash loop"), absl::string_view::npos) << o.status;
  EXPECT_EQ(h.engine().restarts(), 2) << "3 faults: 2 rebuilds, then none";
  EXPECT_EQ(h.health().back(), false);
  auto refused = h.Run("later", false);
  Outcome later = Get(refused);
  EXPECT_TRUE(absl::IsUnavailable(later.status)) << later.status;
  EXPECT_NE(later.status.message().find("crash loop"), absl::string_view::npos) << later.status;
}

// Rebuilds that fail to load name the cause on the line after "cannot load DIR:": the refusal
// clients read keeps it (it once ended at the colon).
TEST(WatchdogTest, CrashLoopOfFailedLoadsNamesTheCause) {
  Harness h([](int) {
    FaultInjectionOptions f;
    f.throw_on_step = 2;
    return f;
  });
  h.set_build_error([](int generation) {
    return generation == 0
               ? absl::OkStatus()
               : absl::FailedPreconditionError("cannot load /models/m:\nno weight files in /models/m\nmore");
  });
  auto r = h.Run("r", false, 2);
  Outcome o = Get(r);
  EXPECT_TRUE(absl::IsUnavailable(o.status)) << o.status;
  EXPECT_NE(o.status.message().find("crash loop"), absl::string_view::npos) << o.status;
  EXPECT_NE(o.status.message().find("cannot load /models/m: no weight files in /models/m)"), absl::string_view::npos)
      << o.status;
  EXPECT_EQ(o.status.message().find("more"), absl::string_view::npos) << o.status;
}

TEST(WatchdogTest, FaultsOutsideTheWindowDoNotCountTowardsTheCrashLoop) {
  WatchdogOptions w = Harness::Defaults();
  w.max_failures = 2;
  w.window = 10s;
  Harness h(
      [](int gen) {
        FaultInjectionOptions f;
        if (gen < 2) f.throw_on_step = 2;
        return f;
      },
      w);
  auto first = h.Run("first", false, 1);
  // Engine 0 faults, engine 1 is built and the request faults it too: 2 within the window.
  Outcome o = Get(first);
  EXPECT_NE(o.status.message().find("crash loop"), absl::string_view::npos) << o.status;

  // Engine 0 faults on the first request, engine 1 serves it and faults on the next one, 11 s
  // later: the first fault has left the window, so engine 2 is built and serves.
  Harness spaced(
      [](int gen) {
        FaultInjectionOptions f;
        if (gen == 0) f.throw_on_step = 2;
        if (gen == 1) f.throw_on_step = 3;
        return f;
      },
      w);
  auto one = spaced.Run("one", false, 1);
  EXPECT_TRUE(Get(one).status.ok());
  ASSERT_TRUE(spaced.WaitRestarts(1));
  spaced.clock().Advance(11s);
  auto two = spaced.Run("two", false, 1);
  EXPECT_TRUE(Get(two).status.ok()) << "a second fault 11 s later is not a crash loop";
  ASSERT_TRUE(spaced.WaitRestarts(2));
  EXPECT_EQ(spaced.engine().restarts(), 2);
}

// The first engine throws on its step 2 (the first request's first step); the rebuild waits an
// hour of the test's clock, which only the test advances.
FaultInjectionOptions FirstEngineThrowsOnStep2(int generation) {
  FaultInjectionOptions f;
  if (generation == 0) f.throw_on_step = 2;
  return f;
}
WatchdogOptions HourBackoff() {
  WatchdogOptions w = Harness::Defaults();
  w.backoff_initial = 1h;
  w.backoff_max = 2h;
  return w;
}

TEST(WatchdogTest, BackoffWaitsForTheClock) {
  Harness h(FirstEngineThrowsOnStep2, HourBackoff());
  auto r = h.Run("r", false, 2);
  ASSERT_TRUE(h.WaitHealthChanges(1));
  EXPECT_EQ(h.health(), std::vector<bool>{false});
  auto refused = h.Run("during", false);
  Outcome during = Get(refused);
  EXPECT_TRUE(absl::IsUnavailable(during.status)) << during.status;
  EXPECT_NE(during.status.message().find("restarting"), absl::string_view::npos) << during.status;
  // When to come back (grpc-retry-pushback-ms, Retry-After): the backoff left, at most a minute.
  EXPECT_EQ(RetryAfterMs(during.status), 60'000) << during.status;
  EXPECT_EQ(h.engine().restarts(), 0);
  h.clock().Advance(1h);
  ASSERT_TRUE(h.WaitRestarts(1));
  const Outcome requeued = Get(r);
  EXPECT_TRUE(requeued.status.ok()) << "requeued on the rebuilt engine";
  // Its times count from the client's submit: the hour without an engine is in them.
  EXPECT_GE(requeued.queue_ms, 3600e3);
  EXPECT_GE(requeued.total_ms, 3600e3);
}

// A request waiting for the rebuilt engine ends at its deadline, during the backoff and during
// the build (it was answered only once the new engine ran: 6.7 s for a 2.5 s deadline behind a
// 6 s reload, for every HTTP request, whose only deadline is the server's).
TEST(WatchdogTest, DeadlinesPassDuringTheBackoff) {
  Harness h(FirstEngineThrowsOnStep2, HourBackoff());
  auto r = h.Run("backoff", false, 2, h.clock().Now() + 10min);
  ASSERT_TRUE(h.WaitHealthChanges(1));
  h.clock().Advance(11min);
  Outcome o = Get(r);
  EXPECT_TRUE(absl::IsDeadlineExceeded(o.status)) << o.status;
  EXPECT_NE(o.status.message().find("while the engine was restarting"), absl::string_view::npos) << o.status;
  EXPECT_EQ(h.engine().restarts(), 0) << "answered before the rebuild";
}

TEST(WatchdogTest, DeadlinesPassDuringTheBuild) {
  Harness h(FirstEngineThrowsOnStep2, Harness::Defaults());  // rebuilds at once
  std::promise<void> loading, release;
  std::shared_future<void> released = release.get_future().share();
  h.set_before_build([&loading, released](int generation) {
    if (generation != 1) return;
    loading.set_value();
    released.wait();  // a reload that takes minutes
  });
  auto r = h.Run("build", false, 2, h.clock().Now() + 10min);
  ASSERT_EQ(loading.get_future().wait_for(kEventTimeout), std::future_status::ready);
  h.clock().Advance(11min);
  Outcome o = Get(r);
  EXPECT_TRUE(absl::IsDeadlineExceeded(o.status)) << o.status;
  EXPECT_EQ(h.engine().restarts(), 0) << "answered while the engine was still being built";
  release.set_value();
  ASSERT_TRUE(h.WaitRestarts(1));
  auto after = h.Run("after", false, 2);
  EXPECT_TRUE(Get(after).status.ok());
}

// While the engine is rebuilt the requests it owes count as waiting, with the last engine's batch
// limit (an empty snapshot read as an idle pod to autoscalers and queue alerts), and a drain asked
// for meanwhile still runs them on the rebuilt engine (it refused them: "engine is draining").
TEST(WatchdogTest, RebuildKeepsOwedRequestsCountedAndADrainRunsThem) {
  Harness h(FirstEngineThrowsOnStep2, HourBackoff());
  const EngineStats before = h.engine().stats();
  ASSERT_GT(before.batch_limit, 0);
  auto r = h.Run("r", false, 2);
  ASSERT_TRUE(h.WaitHealthChanges(1));
  const EngineStats during = h.engine().stats();
  EXPECT_EQ(during.waiting, 1);
  EXPECT_EQ(during.running, 0);
  EXPECT_EQ(during.batch_limit, before.batch_limit);
  EXPECT_EQ(during.max_batch_size, before.max_batch_size);
  h.engine().StartDrain();
  h.clock().Advance(1h);
  ASSERT_TRUE(h.WaitRestarts(1));
  const Outcome requeued = Get(r);
  EXPECT_TRUE(requeued.status.ok()) << requeued.status;
  EXPECT_EQ(requeued.tokens, 2u);
}

TEST(WatchdogTest, IdleCanaryFindsABrokenEngineWithoutClientTraffic) {
  WatchdogOptions w = Harness::Defaults();
  w.canary_interval = 50ms;
  Harness h(
      [](int gen) {
        FaultInjectionOptions f;
        if (gen == 0) f.throw_on_step = 2;  // warm-up is step 1; the first canary's step throws
        return f;
      },
      w);
  EXPECT_EQ(h.engine().restarts(), 0);
  h.clock().Advance(51ms);
  ASSERT_TRUE(h.WaitRestarts(1));
  EXPECT_EQ(h.engine().restarts(), 1);
  ASSERT_TRUE(h.WaitHealthChanges(2));
  EXPECT_EQ(h.health(), (std::vector<bool>{false, true}));
  auto r = h.Run("after", false);
  EXPECT_TRUE(Get(r).status.ok());
}

TEST(WatchdogTest, CreateRefusesBadOptionsNamingTheField) {
  EngineFactory never = [](int, std::function<void(int32_t, const absl::Status&)>) -> absl::StatusOr<EngineInstance> {
    ADD_FAILURE() << "no engine is built with bad options";
    return absl::InternalError("unreachable");
  };
  auto bad = [&](auto mutate, const std::string& field) {
    WatchdogOptions w;
    mutate(w);
    auto e = SelfHealingEngine::Create(w, never, {}, std::make_shared<FakeClock>());
    ASSERT_FALSE(e.ok()) << field;
    EXPECT_TRUE(absl::IsInvalidArgument(e.status())) << e.status();
    EXPECT_NE(e.status().message().find(field), absl::string_view::npos) << e.status();
  };
  bad([](WatchdogOptions& w) { w.stall_timeout = 0ms; }, "stall_timeout");
  bad([](WatchdogOptions& w) { w.backoff_initial = -1ms; }, "backoff_initial");
  bad([](WatchdogOptions& w) { w.backoff_max = -1ms; }, "backoff_max");
  bad([](WatchdogOptions& w) { w.max_failures = 0; }, "max_failures");
  bad([](WatchdogOptions& w) { w.window = 0ms; }, "window");
  bad([](WatchdogOptions& w) { w.canary_interval = -1ms; }, "canary_interval");
  bad([](WatchdogOptions& w) { w.warmup_timeout = 0ms; }, "warmup_timeout");
  EXPECT_TRUE(ValidateWatchdogOptions(WatchdogOptions()).ok());
}

}  // namespace
}  // namespace glmserve
