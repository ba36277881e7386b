// SelfHealingEngine (server/watchdog.h) over the real engine and tests/engine's FakeExecutor:
// faults are the scheduler's injected ones; no gRPC, no LibTorch, no model files.
#include "server/watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "runtime/engine/engine_impl.h"
#include "server/logging.h"
#include "tests/engine/fake_executor.h"
#include "tests/engine/test_util.h"

namespace glmserve {
namespace {

using namespace std::chrono_literals;

struct Outcome {
  absl::Status status;
  size_t tokens = 0;
  size_t streamed = 0;
};

class Harness {
 public:
  // `faults(generation)` gives each engine its fault injection.
  explicit Harness(std::function<FaultInjectionOptions(int)> faults, WatchdogOptions w = Defaults()) {
    ConfigureLogging("error", "text").IgnoreError();
    EngineFactory factory = [faults](int generation, std::function<void(int32_t, const absl::Status&)> beat)
        -> absl::StatusOr<EngineInstance> {
      EngineOptions o;
      o.scheduler.max_batch_size = 8;
      o.scheduler.faults = faults(generation);
      o.scheduler.log = [](const std::string&) {};
      o.on_step_end = beat;
      auto e = CreateInferenceEngine(o, std::make_unique<testing::FakeExecutor>(4, 256, 1000),
                                     testing::TestModelInfo());
      if (!e.ok()) return e.status();
      EngineInstance instance;
      instance.engine = std::move(*e);
      return instance;
    };
    SelfHealingEngine::Hooks hooks;
    hooks.on_health = [this](bool serving) {
      std::lock_guard<std::mutex> lock(mu_);
      health_.push_back(serving);
    };
    auto e = SelfHealingEngine::Create(w, factory, hooks);
    EXPECT_TRUE(e.ok()) << e.status();
    engine_ = std::move(*e);
  }
  static WatchdogOptions Defaults() {
    WatchdogOptions w;
    w.stall_timeout = 300ms;
    w.backoff_initial = 10ms;
    w.max_failures = 3;
    w.warmup_timeout = 5s;
    return w;
  }
  // Submits; the future resolves at on_done.
  std::future<Outcome> Run(const std::string& id, bool stream, int n = 8) {
    InferenceRequest r;
    r.request_id = id;
    r.input_ids = {1, 2, 3};
    r.params.max_new_tokens = n;
    r.params.min_new_tokens = n;
    auto done = std::make_shared<std::promise<Outcome>>();
    auto streamed = std::make_shared<std::atomic<size_t>>(0);
    RequestCallbacks cb;
    cb.on_tokens = [streamed](const std::vector<int32_t>& ids) { *streamed += ids.size(); };
    cb.replayable_after_tokens = !stream;
    cb.on_done = [done, streamed](const RequestResult& res) {
      done->set_value(Outcome{res.status, res.output_ids.size(), streamed->load()});
    };
    absl::Status s = engine_->Submit(std::move(r), std::move(cb));
    if (!s.ok()) done->set_value(Outcome{s, 0, 0});
    return done->get_future();
  }
  std::vector<bool> health() {
    std::lock_guard<std::mutex> lock(mu_);
    return health_;
  }
  SelfHealingEngine& engine() { return *engine_; }

 private:
  std::mutex mu_;
  std::vector<bool> health_;
  std::unique_ptr<SelfHealingEngine> engine_;
};

Outcome Get(std::future<Outcome>& f) {
  EXPECT_EQ(f.wait_for(20s), std::future_status::ready);
  return f.get();
}

TEST(WatchdogTest, ExceptionRebuildsRequeuesUnaryAndFailsStreamedOnes) {
  Harness h([](int gen) {
    FaultInjectionOptions f;
    f.step_latency = 2ms;
    if (gen == 0) f.throw_on_step = 6;  // after warm-up and a few decode steps
    return f;
  });
  auto unary = h.Run("u", /*stream=*/false);
  auto streamed = h.Run("s", /*stream=*/true);
  Outcome u = Get(unary), s = Get(streamed);
  EXPECT_TRUE(u.status.ok()) << u.status;
  EXPECT_EQ(u.tokens, 8u) << "rerun from scratch on the new engine";
  EXPECT_TRUE(absl::IsUnavailable(s.status)) << s.status;
  EXPECT_NE(s.status.message().find("already sent"), absl::string_view::npos) << s.status;
  EXPECT_GT(s.streamed, 0u);
  EXPECT_EQ(h.engine().restarts(), 1);
  EXPECT_EQ(h.health(), (std::vector<bool>{false, true}));
  auto after = h.Run("after", false);
  EXPECT_TRUE(Get(after).status.ok());
}

TEST(WatchdogTest, StallPastTheTimeoutRebuildsWithoutWaitingForTheStuckStep) {
  Harness h([](int gen) {
    FaultInjectionOptions f;
    if (gen == 0) {
      f.stall_on_step = 3;
      f.stall_duration = 3000ms;
    }
    return f;
  });
  const auto start = std::chrono::steady_clock::now();
  auto a = h.Run("a", false), b = h.Run("b", false);
  EXPECT_TRUE(Get(a).status.ok());
  EXPECT_TRUE(Get(b).status.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2500ms) << "recovered before the stuck step ended";
  EXPECT_EQ(h.engine().restarts(), 1);
  EXPECT_TRUE(h.engine().HasStuckEngine());
  for (int i = 0; i < 100 && h.engine().HasStuckEngine(); ++i) std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(h.engine().HasStuckEngine()) << "the stalled engine is shut down once its step returns";
}

TEST(WatchdogTest, CrashLoopStaysNotServingAndSaysWhy) {
  Harness h([](int) {
    FaultInjectionOptions f;
    f.throw_on_step = 2;  // every engine: warm-up is step 1, the first real step throws
    return f;
  });
  bool gave_up = false;
  for (int i = 0; i < 500 && !gave_up; ++i) {
    auto r = h.Run("r" + std::to_string(i), false, 2);
    Outcome o = Get(r);
    EXPECT_TRUE(absl::IsUnavailable(o.status)) << o.status;  // a fault, a restart, or the give-up
    gave_up = o.status.message().find("crash loop") != absl::string_view::npos;
    if (!gave_up) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(gave_up);
  EXPECT_EQ(h.engine().restarts(), 2) << "3 faults: 2 rebuilds, then none";
  EXPECT_EQ(h.health().back(), false);
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
  for (int i = 0; i < 100 && h.engine().restarts() == 0; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(h.engine().restarts(), 1);
  EXPECT_EQ(h.health(), (std::vector<bool>{false, true}));
  auto r = h.Run("after", false);
  EXPECT_TRUE(Get(r).status.ok());
}

}  // namespace
}  // namespace glmserve
