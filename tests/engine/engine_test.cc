// Engine tests: the engine thread around the scheduler, driven through InferenceEngine.
// Waits are condition variables / WaitIdle with generous timeouts, as safety nets only.
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/engine/engine_impl.h"
#include "tests/engine/fake_executor.h"
#include "tests/engine/test_util.h"

namespace glmserve {
namespace {

using testing::FakeExecutor;
using testing::MakePrompt;
using testing::MakeRequest;
using testing::TestModelInfo;
constexpr std::chrono::seconds kSafety(60);

// Collects results from the engine thread.
class Collector {
 public:
  RequestCallbacks Callbacks(const std::string& id) {
    RequestCallbacks cb;
    cb.on_tokens = [this, id](const std::vector<int32_t>& ids) {
      std::lock_guard<std::mutex> lock(mu_);
      auto& s = streamed_[id];
      s.insert(s.end(), ids.begin(), ids.end());
      cv_.notify_all();
    };
    cb.on_done = [this, id](const RequestResult& r) {
      std::lock_guard<std::mutex> lock(mu_);
      ++done_[id];
      results_[id] = r;
      cv_.notify_all();
    };
    return cb;
  }
  bool WaitTokens(const std::string& id, size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kSafety, [&] { return streamed_[id].size() >= n; });
  }
  int done(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return done_[id];
  }
  RequestResult result(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_[id];
  }
  std::vector<int32_t> streamed(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return streamed_[id];
  }
  size_t num_done() {
    std::lock_guard<std::mutex> lock(mu_);
    return done_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<int32_t>> streamed_;
  std::map<std::string, RequestResult> results_;
  std::map<std::string, int> done_;
};

struct EngineHarness {
  explicit EngineHarness(EngineOptions options, int32_t block_size = 4, int32_t num_blocks = 1024,
                         std::shared_ptr<FakeClock> fake_clock = nullptr)
      : clock(fake_clock ? fake_clock : std::make_shared<FakeClock>()) {
    auto exec = std::make_unique<FakeExecutor>(block_size, num_blocks, 1000);
    executor = exec.get();
    options.scheduler.log = [](const std::string&) {};
    options.on_batch_limit_change = [this](int32_t, int32_t n) {
      std::lock_guard<std::mutex> lock(limits_mu);
      limits.push_back(n);
    };
    auto e = CreateInferenceEngine(std::move(options), std::move(exec), TestModelInfo(), clock);
    EXPECT_TRUE(e.ok()) << e.status();
    engine = std::move(e).value();
  }
  std::vector<int32_t> Reference(const InferenceRequest& r) const {
    return executor->Reference(r.input_ids, r.params.max_new_tokens, r.params.min_new_tokens, r.params.stop_token_ids);
  }
  std::vector<int32_t> limit_history() {
    std::lock_guard<std::mutex> lock(limits_mu);
    return limits;
  }

  // Declared before the engine so the engine thread is joined before they go away.
  Collector collector;
  std::mutex limits_mu;
  std::vector<int32_t> limits;
  std::shared_ptr<FakeClock> clock;
  FakeExecutor* executor = nullptr;  // owned by the engine
  std::unique_ptr<InferenceEngine> engine;
};

// A varied request: prompt, lengths, min_new and stop ids differ by index.
InferenceRequest Varied(int i) {
  InferenceRequest r = MakeRequest("q" + std::to_string(i), MakePrompt(i, 3 + (i * 5) % 17), 4 + (i * 7) % 29, i % 3);
  if (i % 4 == 0) {
    FakeExecutor probe(4, 16, 1000);
    auto free_run = probe.Reference(r.input_ids, r.params.max_new_tokens, 0, {});
    r.params.stop_token_ids = {free_run[free_run.size() / 2]};
  }
  return r;
}

TEST(EngineTest, CreateRejectsBadOptions) {
  EngineOptions o;
  o.max_queued_requests = 0;
  auto e = CreateInferenceEngine(o, std::make_unique<FakeExecutor>(4, 16, 1000), TestModelInfo());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("max_queued_requests"), std::string::npos);
  o = EngineOptions();
  o.scheduler.max_batch_size = -2;
  e = CreateInferenceEngine(o, std::make_unique<FakeExecutor>(4, 16, 1000), TestModelInfo());
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("max_batch_size"), std::string::npos);
  e = CreateInferenceEngine(EngineOptions(), nullptr, TestModelInfo());
  EXPECT_FALSE(e.ok());
}

TEST(EngineTest, SubmitValidatesAndRejectsDuplicates) {
  EngineHarness h(EngineOptions(), /*block_size=*/4, /*num_blocks=*/8);  // 32 tokens
  Collector& c = h.collector;
  auto s = h.engine->Submit(MakeRequest("e", {}, 4), c.Callbacks("e"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("input_ids"), std::string::npos);
  s = h.engine->Submit(MakeRequest("z", {1, 2}, 0), c.Callbacks("z"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_new_tokens"), std::string::npos);
  s = h.engine->Submit(MakeRequest("big", MakePrompt(1, 30), 3), c.Callbacks("big"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("KV cache capacity"), std::string::npos);

  h.executor->CloseGate();
  ASSERT_TRUE(h.engine->Submit(MakeRequest("dup", MakePrompt(1, 3), 3), c.Callbacks("dup")).ok());
  s = h.engine->Submit(MakeRequest("dup", MakePrompt(1, 3), 3), c.Callbacks("dup"));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_EQ(c.done("dup"), 1);
  EXPECT_EQ(c.done("e"), 0);  // rejected requests are never called back
  EXPECT_EQ(c.done("big"), 0);
  // Once finished, the id may be reused.
  EXPECT_TRUE(h.engine->Submit(MakeRequest("dup", MakePrompt(1, 3), 3), c.Callbacks("dup")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_EQ(c.done("dup"), 2);
}

TEST(EngineTest, BatchInvariance64ConcurrentVsAlone) {
  EngineOptions o;
  o.scheduler.max_batch_size = 64;
  EngineHarness h(o);
  // Alone: one at a time through the engine.
  std::map<std::string, std::vector<int32_t>> alone;
  for (int i = 0; i < 64; ++i) {
    InferenceRequest r = Varied(i);
    r.request_id = "alone" + std::to_string(i);
    const std::string id = r.request_id;
    ASSERT_TRUE(h.engine->Submit(r, h.collector.Callbacks(id)).ok());
    ASSERT_TRUE(h.engine->WaitIdle(kSafety));
    alone["q" + std::to_string(i)] = h.collector.result(id).output_ids;
    EXPECT_EQ(h.collector.result(id).output_ids, h.Reference(r));
  }
  // Concurrent: all 64 queued while the executor is held, then released at once.
  h.executor->CloseGate();
  ASSERT_TRUE(h.engine->Submit(MakeRequest("warm", MakePrompt(77, 3), 2), h.collector.Callbacks("warm")).ok());
  ASSERT_TRUE(h.executor->WaitBlockedAtGate(kSafety));
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = t; i < 64; i += 4) {
        InferenceRequest r = Varied(i);
        EXPECT_TRUE(h.engine->Submit(r, h.collector.Callbacks(r.request_id)).ok());
      }
    });
  }
  for (auto& t : submitters) t.join();
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  for (int i = 0; i < 64; ++i) {
    const std::string id = "q" + std::to_string(i);
    EXPECT_EQ(h.collector.done(id), 1) << id;
    EXPECT_TRUE(h.collector.result(id).status.ok()) << id;
    EXPECT_EQ(h.collector.result(id).output_ids, alone[id]) << id;
    EXPECT_EQ(h.collector.streamed(id), alone[id]) << id;
  }
  EXPECT_GE(h.executor->max_batch_seen(), 32);
  EXPECT_TRUE(h.executor->errors().empty()) << h.executor->errors()[0];
  EXPECT_EQ(h.engine->stats().blocks_used, 0);
}

TEST(EngineTest, OomStormLosesNothingAndTheLimitRecovers) {
  EngineOptions o;
  o.scheduler.max_batch_size = 64;
  o.scheduler.aimd_increase_after_steps = 4;
  o.scheduler.faults.oom_above_sequences = 8;
  EngineHarness h(o);
  h.executor->CloseGate();
  ASSERT_TRUE(h.engine->Submit(MakeRequest("warm", MakePrompt(77, 3), 2), h.collector.Callbacks("warm")).ok());
  ASSERT_TRUE(h.executor->WaitBlockedAtGate(kSafety));
  std::map<std::string, std::vector<int32_t>> expected;
  for (int i = 0; i < 100; ++i) {
    InferenceRequest r = Varied(i);
    expected[r.request_id] = h.Reference(r);
    ASSERT_TRUE(h.engine->Submit(r, h.collector.Callbacks(r.request_id)).ok());
  }
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  int ok = 0;
  for (const auto& [id, ids] : expected) {
    EXPECT_EQ(h.collector.done(id), 1) << id;
    const RequestResult r = h.collector.result(id);
    EXPECT_TRUE(r.status.ok()) << id << ": " << r.status;
    EXPECT_EQ(r.output_ids, ids) << id;
    ok += r.status.ok() && r.output_ids == ids;
  }
  EXPECT_EQ(ok, 100);
  const EngineStats st = h.engine->stats();
  EXPECT_GT(st.oom_events, 0);
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_LE(h.executor->max_batch_seen(), 8);
  // The limit dropped from 64 to at most 8, and grew back afterwards.
  const std::vector<int32_t> limits = h.limit_history();
  ASSERT_FALSE(limits.empty());
  const auto min_it = std::min_element(limits.begin(), limits.end());
  EXPECT_LE(*min_it, 8);
  EXPECT_GT(limits.back(), *min_it);
  bool grew = false;
  for (size_t i = 1; i < limits.size(); ++i) grew |= limits[i] > limits[i - 1];
  EXPECT_TRUE(grew);
  EXPECT_TRUE(h.executor->errors().empty()) << h.executor->errors()[0];
}

TEST(EngineTest, PoolExhaustionPreemptsAndRecomputesIdentically) {
  EngineOptions o;
  o.scheduler.max_batch_size = 16;
  EngineHarness h(o, /*block_size=*/4, /*num_blocks=*/24);  // 96 tokens for 16 sequences
  h.executor->CloseGate();
  ASSERT_TRUE(h.engine->Submit(MakeRequest("warm", MakePrompt(77, 3), 2), h.collector.Callbacks("warm")).ok());
  ASSERT_TRUE(h.executor->WaitBlockedAtGate(kSafety));
  std::map<std::string, std::vector<int32_t>> expected;
  for (int i = 0; i < 24; ++i) {
    InferenceRequest r = MakeRequest("p" + std::to_string(i), MakePrompt(i, 6), 24);
    expected[r.request_id] = h.Reference(r);
    ASSERT_TRUE(h.engine->Submit(r, h.collector.Callbacks(r.request_id)).ok());
  }
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  for (const auto& [id, ids] : expected) {
    EXPECT_EQ(h.collector.done(id), 1);
    EXPECT_EQ(h.collector.result(id).output_ids, ids) << id;
    EXPECT_EQ(h.collector.streamed(id), ids) << id;  // no token streamed twice on recompute
  }
  EXPECT_GT(h.engine->stats().preemptions, 0);
  EXPECT_EQ(h.engine->stats().blocks_used, 0);
  EXPECT_EQ(h.engine->stats().blocks_free, 24);
  EXPECT_TRUE(h.executor->errors().empty()) << h.executor->errors()[0];
}

// An engine of `batch` slots and a waiting queue of `queue`.
EngineOptions QueueOptions(int32_t batch, int32_t queue) {
  EngineOptions o;
  o.scheduler.max_batch_size = batch;
  o.scheduler.max_tokens_per_step = 64;
  o.max_queued_requests = queue;
  return o;
}

// Request "a" running, its step held at the executor's gate: what is submitted now waits for the
// engine thread (Open() lets it go on).
void HoldAStepWithOneRunning(EngineHarness& h) {
  h.executor->CloseGate();
  ASSERT_TRUE(h.engine->Submit(MakeRequest("a", MakePrompt(1, 3), 3), h.collector.Callbacks("a")).ok());
  ASSERT_TRUE(h.executor->WaitBlockedAtGate(kSafety));
}

// Arrivals within one step wait for the engine thread to admit them; those the batch's free
// slots will take are not the waiting queue's: a burst of batch + queue is accepted.
TEST(EngineTest, BurstFillsFreeBatchSlotsBeforeTheQueue) {
  EngineHarness h(QueueOptions(/*batch=*/4, /*queue=*/2));
  ASSERT_NO_FATAL_FAILURE(HoldAStepWithOneRunning(h));  // 3 free slots, none queued
  const std::vector<std::string> burst = {"b", "c", "d", "e", "f"};
  for (const std::string& id : burst) {
    EXPECT_TRUE(h.engine->Submit(MakeRequest(id, MakePrompt(2, 3), 3), h.collector.Callbacks(id)).ok()) << id;
  }
  absl::Status s = h.engine->Submit(MakeRequest("g", MakePrompt(3, 3), 3), h.collector.Callbacks("g"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << "3 free slots + a queue of 2 taken";
  EXPECT_NE(s.message().find("at most 2: serve's --max-queue"), std::string::npos) << s;
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  for (const std::string& id : burst) {
    EXPECT_EQ(h.collector.done(id), 1) << id;
    EXPECT_TRUE(h.collector.result(id).status.ok()) << id;
  }
}

TEST(EngineTest, QueueFullAnswersAtOnceWithRetryAfter) {
  EngineHarness h(QueueOptions(/*batch=*/1, /*queue=*/2));
  ASSERT_NO_FATAL_FAILURE(HoldAStepWithOneRunning(h));  // no free slot, none queued
  ASSERT_TRUE(h.engine->Submit(MakeRequest("b", MakePrompt(2, 3), 3), h.collector.Callbacks("b")).ok());
  ASSERT_TRUE(h.engine->Submit(MakeRequest("c", MakePrompt(3, 3), 3), h.collector.Callbacks("c")).ok());
  absl::Status s = h.engine->Submit(MakeRequest("d", MakePrompt(4, 3), 3), h.collector.Callbacks("d"));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("retry after"), std::string::npos) << s;
  EXPECT_NE(s.message().find("at most 2: serve's --max-queue"), std::string::npos) << s;
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  for (const char* id : {"a", "b", "c"}) {
    EXPECT_EQ(h.collector.done(id), 1);
    EXPECT_TRUE(h.collector.result(id).status.ok());
  }
  EXPECT_EQ(h.collector.done("d"), 0);
  // With room again, it is accepted.
  EXPECT_TRUE(h.engine->Submit(MakeRequest("d", MakePrompt(4, 3), 3), h.collector.Callbacks("d")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_EQ(h.collector.done("d"), 1);
}

TEST(EngineTest, DrainFinishesInFlightAndRefusesNew) {
  EngineOptions o;
  o.scheduler.max_batch_size = 2;
  o.scheduler.max_tokens_per_step = 64;
  EngineHarness h(o);
  h.executor->CloseGate();
  for (int i = 0; i < 5; ++i) {
    InferenceRequest r = MakeRequest("d" + std::to_string(i), MakePrompt(i, 4), 6);
    ASSERT_TRUE(h.engine->Submit(r, h.collector.Callbacks(r.request_id)).ok());
  }
  ASSERT_TRUE(h.executor->WaitBlockedAtGate(kSafety));
  h.engine->StartDrain();
  absl::Status s = h.engine->Submit(MakeRequest("late", MakePrompt(9, 4), 6), h.collector.Callbacks("late"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  // One a front end admitted before the drain (it waited in the front end's own queue) is taken.
  InferenceRequest owed = MakeRequest("owed", MakePrompt(8, 4), 6);
  owed.admitted_before_drain = true;
  EXPECT_TRUE(h.engine->Submit(owed, h.collector.Callbacks("owed")).ok());
  EXPECT_FALSE(h.engine->WaitIdle(std::chrono::milliseconds(1)));
  h.executor->Open();
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  for (int i = 0; i < 5; ++i) {
    const std::string id = "d" + std::to_string(i);
    EXPECT_EQ(h.collector.done(id), 1);
    EXPECT_TRUE(h.collector.result(id).status.ok());
    EXPECT_EQ(h.collector.result(id).output_ids.size(), 6u);
  }
  EXPECT_EQ(h.collector.done("late"), 0);
  EXPECT_TRUE(h.collector.result("owed").status.ok());
  EXPECT_EQ(h.collector.result("owed").output_ids, h.Reference(owed));
  h.engine->Shutdown();
  h.engine->Shutdown();  // idempotent
  EXPECT_EQ(h.engine->Submit(MakeRequest("after", MakePrompt(9, 4), 6), h.collector.Callbacks("after")).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(h.engine->Submit(owed, h.collector.Callbacks("owed-after")).code(), absl::StatusCode::kUnavailable)
      << "not after Shutdown";
}

TEST(EngineTest, ShutdownCancelsEverythingExactlyOnce) {
  EngineOptions o;
  o.scheduler.max_batch_size = 2;
  o.scheduler.max_tokens_per_step = 64;
  EngineHarness h(o, 4, 4096);
  for (int i = 0; i < 6; ++i) {
    InferenceRequest r = MakeRequest("s" + std::to_string(i), MakePrompt(i, 4), 4000);
    ASSERT_TRUE(h.engine->Submit(r, h.collector.Callbacks(r.request_id)).ok());
  }
  ASSERT_TRUE(h.collector.WaitTokens("s0", 3));
  h.engine->Shutdown();
  for (int i = 0; i < 6; ++i) {
    const std::string id = "s" + std::to_string(i);
    EXPECT_EQ(h.collector.done(id), 1) << id;
    EXPECT_EQ(h.collector.result(id).status.code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(h.collector.result(id).finish_reason, FinishReason::kCancelled);
  }
  EXPECT_TRUE(h.engine->WaitIdle(std::chrono::milliseconds(0)));
  EXPECT_EQ(h.engine->stats().blocks_used, 0);
}

TEST(EngineTest, CancelFreesBlocksAndLeavesOthersUntouched) {
  EngineOptions o;
  o.scheduler.max_tokens_per_step = 64;
  EngineHarness h(o, 4, 4096);
  InferenceRequest keep = MakeRequest("keep", MakePrompt(1, 5), 40);
  ASSERT_TRUE(h.engine->Submit(keep, h.collector.Callbacks("keep")).ok());
  ASSERT_TRUE(h.engine->Submit(MakeRequest("victim", MakePrompt(2, 5), 4000), h.collector.Callbacks("victim")).ok());
  ASSERT_TRUE(h.collector.WaitTokens("victim", 3));
  h.engine->Cancel("victim");
  h.engine->Cancel("victim");
  h.engine->Cancel("unknown");
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_EQ(h.collector.done("victim"), 1);
  const RequestResult v = h.collector.result("victim");
  EXPECT_EQ(v.status.code(), absl::StatusCode::kCancelled);
  EXPECT_GE(v.output_ids.size(), 3u);
  EXPECT_EQ(h.collector.result("keep").output_ids, h.Reference(keep));
  EXPECT_EQ(h.engine->stats().blocks_used, 0);
}

TEST(EngineTest, DeadlineWithFakeClockAndTimingFields) {
  auto clock = std::make_shared<FakeClock>();
  EngineOptions o;
  o.scheduler.max_tokens_per_step = 64;
  EngineHarness h(o, 4, 1024, clock);
  h.executor->AdvanceClockPerStep(clock.get(), std::chrono::milliseconds(10));
  InferenceRequest late = MakeRequest("late", MakePrompt(1, 5), 1000);
  late.deadline = clock->Now() + std::chrono::milliseconds(55);
  ASSERT_TRUE(h.engine->Submit(late, h.collector.Callbacks("late")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  RequestResult r = h.collector.result("late");
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(r.finish_reason, FinishReason::kDeadline);
  EXPECT_EQ(r.output_ids.size(), 6u);
  EXPECT_EQ(h.engine->stats().blocks_used, 0);

  InferenceRequest timed = MakeRequest("timed", MakePrompt(2, 5), 3);
  ASSERT_TRUE(h.engine->Submit(timed, h.collector.Callbacks("timed")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  r = h.collector.result("timed");
  EXPECT_TRUE(r.status.ok());
  EXPECT_EQ(r.finish_reason, FinishReason::kLength);
  EXPECT_EQ(r.prompt_tokens, 5);
  EXPECT_DOUBLE_EQ(r.queue_ms, 0.0);
  EXPECT_DOUBLE_EQ(r.ttft_ms, 10.0);
  EXPECT_DOUBLE_EQ(r.total_ms, 30.0);
}

TEST(EngineTest, QueueDelayWakesOnFakeClockAdvance) {
  auto clock = std::make_shared<FakeClock>();
  EngineOptions o;
  o.scheduler.max_batch_size = 4;
  o.scheduler.max_tokens_per_step = 64;
  o.scheduler.max_queue_delay = std::chrono::milliseconds(100);
  EngineHarness h(o, 4, 1024, clock);
  ASSERT_TRUE(h.engine->Submit(MakeRequest("held", MakePrompt(1, 3), 2), h.collector.Callbacks("held")).ok());
  EXPECT_FALSE(h.engine->WaitIdle(std::chrono::milliseconds(50)));  // held by the window
  EXPECT_EQ(h.executor->num_steps(), 0);
  clock->Advance(std::chrono::milliseconds(100));
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_TRUE(h.collector.result("held").status.ok());
  EXPECT_DOUBLE_EQ(h.collector.result("held").queue_ms, 100.0);
}

// A 40-token prompt where a step holds 16 tokens: prefilled in smaller chunks after its whole
// chunk ran out of memory (it failed FAILED_PRECONDITION), beside a small request.
TEST(EngineTest, InjectedOomAlonePrefillsInSmallerChunks) {
  EngineOptions o;
  o.scheduler.max_tokens_per_step = 64;
  o.scheduler.faults.oom_above_tokens = 16;
  EngineHarness h(o);
  InferenceRequest small = MakeRequest("small", MakePrompt(1, 4), 8);
  InferenceRequest huge = MakeRequest("huge", MakePrompt(2, 40), 4);
  ASSERT_TRUE(h.engine->Submit(huge, h.collector.Callbacks("huge")).ok());
  ASSERT_TRUE(h.engine->Submit(small, h.collector.Callbacks("small")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_TRUE(h.collector.result("huge").status.ok()) << h.collector.result("huge").status;
  EXPECT_EQ(h.collector.result("huge").output_ids, h.Reference(huge));
  EXPECT_EQ(h.collector.result("small").output_ids, h.Reference(small));
  EXPECT_EQ(h.collector.done("huge"), 1);
}

// A glm4v prompt through the engine: Submit refuses a malformed one naming the field; a good one
// carries its pointer on every step; the engine thread releases every sequence it ran, including
// the one still running at Shutdown.
TEST(EngineTest, MultimodalRequestsAreValidatedCarriedAndReleased) {
  EngineHarness h{EngineOptions()};
  auto images = [](int32_t len, int32_t offset, int32_t num_tokens) {
    auto mm = std::make_shared<MultimodalPrompt>();
    mm->prompt_len = len;
    mm->positions.resize(3 * static_cast<size_t>(len), 0);
    mm->images.resize(1);
    mm->images[0].num_tokens = num_tokens;
    mm->image_offsets = {offset};
    return mm;
  };
  InferenceRequest bad = MakeRequest("bad", MakePrompt(1, 10), 4);
  bad.multimodal = images(10, 8, 3);  // tokens [8, 11) past the 10 input_ids
  absl::Status s = h.engine->Submit(bad, h.collector.Callbacks("bad"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("multimodal.images[0].num_tokens"), std::string::npos) << s;

  InferenceRequest good = MakeRequest("good", MakePrompt(2, 10), 4);
  const std::shared_ptr<const MultimodalPrompt> mm = images(10, 2, 3);
  good.multimodal = mm;
  ASSERT_TRUE(h.engine->Submit(good, h.collector.Callbacks("good")).ok());
  ASSERT_TRUE(h.engine->WaitIdle(kSafety));
  EXPECT_EQ(h.collector.result("good").output_ids, h.Reference(good));
  int steps = 0;
  for (const auto& batch : h.executor->batches()) {
    for (const SequenceStep& st : batch) {
      EXPECT_EQ(st.multimodal, mm.get());
      ++steps;
    }
  }
  EXPECT_EQ(steps, 4);  // one prefill, three decodes
  EXPECT_EQ(h.executor->released().size(), 1u);

  InferenceRequest held = MakeRequest("held", MakePrompt(3, 10), 2000);
  held.multimodal = images(10, 0, 5);
  ASSERT_TRUE(h.engine->Submit(held, h.collector.Callbacks("held")).ok());
  ASSERT_TRUE(h.collector.WaitTokens("held", 2));
  h.engine->Shutdown();
  EXPECT_EQ(h.collector.done("held"), 1);
  EXPECT_EQ(h.executor->released().size(), 2u);
  EXPECT_TRUE(h.executor->unreleased().empty());
  EXPECT_TRUE(h.executor->errors().empty()) << h.executor->errors()[0];
}

}  // namespace
}  // namespace glmserve
