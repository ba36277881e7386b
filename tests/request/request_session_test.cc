// RequestSession over a fake engine: the test plays the engine thread (it calls on_tokens/on_done
// itself), Flush() waits for the delivery workers, so nothing sleeps and every wait is bounded.
#include "server/request/request_session.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "runtime/tokenizer/tokenizer.h"

namespace glmserve {
namespace {

class FakeEngine final : public InferenceEngine {
 public:
  FakeEngine() {
    info_.vocab_size = 1024;
    info_.max_position_embeddings = 256;
    info_.eos_token_ids = {1000};
  }
  absl::Status Submit(InferenceRequest request, RequestCallbacks callbacks) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!refuse.ok()) return refuse;
    requests.push_back(std::move(request));
    this->callbacks.push_back(std::move(callbacks));
    return absl::OkStatus();
  }
  void Cancel(const std::string& request_id) override {
    std::lock_guard<std::mutex> lock(mu);
    cancelled.push_back(request_id);
  }
  void StartDrain() override {}
  bool WaitIdle(std::chrono::milliseconds) override { return true; }
  void Shutdown() override {}
  const ModelInfo& model_info() const override { return info_; }

  std::mutex mu;
  absl::Status refuse;
  std::vector<InferenceRequest> requests;
  std::vector<RequestCallbacks> callbacks;
  std::vector<std::string> cancelled;

 private:
  ModelInfo info_;
};

class CountingObserver final : public RequestObserver {
 public:
  void OnRequestFinished(const char* code, const RequestResult* result) override {
    std::lock_guard<std::mutex> lock(mu);
    codes.push_back(code);
    with_result.push_back(result != nullptr);
  }
  std::mutex mu;
  std::vector<std::string> codes;
  std::vector<bool> with_result;
};

class RecordingSink final : public SessionSink {
 public:
  void OnStep(const std::vector<int32_t>& ids, const std::string& text) override {
    std::lock_guard<std::mutex> lock(mu);
    steps.push_back(ids);
    texts.push_back(text);
    threads.push_back(std::this_thread::get_id());
  }
  void OnFinish(const RequestResult& r, const std::string& rest, const std::string& all) override {
    std::lock_guard<std::mutex> lock(mu);
    ++finishes;
    result = r;
    tail = rest;
    text = all;
    threads.push_back(std::this_thread::get_id());
  }
  std::mutex mu;
  std::vector<std::vector<int32_t>> steps;
  std::vector<std::string> texts;
  std::vector<std::thread::id> threads;
  int finishes = 0;
  RequestResult result;
  std::string tail;
  std::string text;
};

class SessionTest : public ::testing::Test {
 public:
  void SetUp() override { Make(RequestSessionsOptions()); }
  void Make(RequestSessionsOptions options, bool log_requests = false) {
    options.log_requests = log_requests;
    options.observer = observer;
    sessions = std::make_unique<RequestSessions>(std::move(options));
    sessions->SetEngine(&engine);
  }
  // Admit, validate, submit a request of `ids`; the refusal, if any.
  std::optional<Refusal> Start(GenerateRequest request, bool streaming, std::shared_ptr<SessionSink> sink,
                               std::shared_ptr<RequestSession>* session, const std::string& client = "c") {
    Admission admission;
    if (auto r = sessions->Admit(client, &admission)) return r;
    SessionInfo info;
    info.request_id = "req";
    info.rpc = "test";
    info.streaming = streaming;
    InferenceRequest engine_request;
    if (auto r = sessions->Validate(request, Dialect::kProto, admission, info, &engine_request)) return r;
    return sessions->Submit(admission, std::move(engine_request), std::move(info), request.stop, std::move(sink),
                            session);
  }
  static GenerateRequest Ids(std::vector<int32_t> ids, int32_t max_new_tokens = 8) {
    GenerateRequest r;
    r.input_ids = std::move(ids);
    r.max_new_tokens = max_new_tokens;
    return r;
  }

  FakeEngine engine;
  std::shared_ptr<CountingObserver> observer = std::make_shared<CountingObserver>();
  std::unique_ptr<RequestSessions> sessions;
};

TEST_F(SessionTest, StreamsStepsOffTheEngineThreadThenFinishesOnce) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(Ids({1, 2, 3}), /*streaming=*/true, sink, &session));
  ASSERT_EQ(engine.callbacks.size(), 1u);
  EXPECT_EQ(engine.requests[0].request_id, session->engine_id());
  EXPECT_EQ(session->engine_id().rfind("req#", 0), 0u);       // the trace id names the engine request
  EXPECT_FALSE(engine.callbacks[0].replayable_after_tokens);  // a stream has sent tokens
  RequestCallbacks& cb = engine.callbacks[0];
  cb.on_tokens({5});
  cb.on_tokens({6});
  RequestResult result;
  result.finish_reason = FinishReason::kLength;
  result.output_ids = {5, 6};
  cb.on_done(result);
  sessions->Flush();
  std::lock_guard<std::mutex> lock(sink->mu);
  EXPECT_EQ(sink->steps, (std::vector<std::vector<int32_t>>{{5}, {6}}));
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_TRUE(sink->result.status.ok());
  for (std::thread::id id : sink->threads) EXPECT_NE(id, std::this_thread::get_id());  // delivery workers
  std::lock_guard<std::mutex> olock(observer->mu);
  EXPECT_EQ(observer->codes, (std::vector<std::string>{"OK"}));
  EXPECT_EQ(observer->with_result, (std::vector<bool>{true}));
}

// The engine thread wakes at most one worker per burst of queued sessions (one futex wake a
// step, RequestSessions::Queue); the worker it woke wakes the next. Session A's sink holds its
// worker until B's step arrives, so B is delivered only if the burst reached the second worker.
TEST_F(SessionTest, ABurstOfSessionsReachesEveryDeliveryWorker) {
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool b_delivered = false;
  };
  auto gate = std::make_shared<Gate>();
  class WaitForB final : public SessionSink {
   public:
    explicit WaitForB(std::shared_ptr<Gate> gate) : gate_(std::move(gate)) {}
    void OnStep(const std::vector<int32_t>&, const std::string&) override {
      std::unique_lock<std::mutex> lock(gate_->mu);
      saw_b = gate_->cv.wait_for(lock, std::chrono::seconds(10), [&] { return gate_->b_delivered; });
    }
    void OnFinish(const RequestResult&, const std::string&, const std::string&) override {}
    bool saw_b = false;

   private:
    std::shared_ptr<Gate> gate_;
  };
  class OpenGate final : public SessionSink {
   public:
    explicit OpenGate(std::shared_ptr<Gate> gate) : gate_(std::move(gate)) {}
    void OnStep(const std::vector<int32_t>&, const std::string&) override {
      std::lock_guard<std::mutex> lock(gate_->mu);
      gate_->b_delivered = true;
      gate_->cv.notify_all();
    }
    void OnFinish(const RequestResult&, const std::string&, const std::string&) override {}

   private:
    std::shared_ptr<Gate> gate_;
  };
  auto a = std::make_shared<WaitForB>(gate);
  std::shared_ptr<RequestSession> session_a, session_b;
  ASSERT_FALSE(Start(Ids({1, 2}), /*streaming=*/true, a, &session_a));
  ASSERT_FALSE(Start(Ids({1, 2}), /*streaming=*/true, std::make_shared<OpenGate>(gate), &session_b));
  ASSERT_EQ(engine.callbacks.size(), 2u);
  engine.callbacks[0].on_tokens({5});  // one engine step: both sessions queued back to back
  engine.callbacks[1].on_tokens({6});
  sessions->Flush();
  EXPECT_TRUE(a->saw_b) << "B's step waited behind A's on one worker";
  RequestResult result;
  result.finish_reason = FinishReason::kLength;
  for (RequestCallbacks& cb : engine.callbacks) cb.on_done(result);
  sessions->Flush();
}

// Many sessions, many steps, queued from one thread as the engine does: every step reaches its
// sink in order and Flush() returns (no wake lost while workers sleep and wake).
TEST_F(SessionTest, EveryStepOfManyStreamsIsDelivered) {
  constexpr int kSessions = 64, kSteps = 40;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  std::vector<std::shared_ptr<RequestSession>> started(kSessions);
  for (int i = 0; i < kSessions; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_FALSE(Start(Ids({1, 2}, kSteps), /*streaming=*/true, sinks.back(), &started[i]));
  }
  for (int step = 0; step < kSteps; ++step) {
    for (int i = 0; i < kSessions; ++i) engine.callbacks[i].on_tokens({step});
    if (step % 8 == 0) sessions->Flush();  // let the workers fall asleep between some steps
  }
  RequestResult result;
  result.finish_reason = FinishReason::kLength;
  for (RequestCallbacks& cb : engine.callbacks) cb.on_done(result);
  sessions->Flush();
  std::vector<std::vector<int32_t>> expected;
  for (int step = 0; step < kSteps; ++step) expected.push_back({step});
  for (int i = 0; i < kSessions; ++i) {
    std::lock_guard<std::mutex> lock(sinks[i]->mu);
    EXPECT_EQ(sinks[i]->steps, expected) << "session " << i;
    EXPECT_EQ(sinks[i]->finishes, 1) << "session " << i;
  }
}

TEST_F(SessionTest, UnaryWithoutStopStringsIsReplayableAndSeesNoSteps) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(Ids({1, 2}), /*streaming=*/false, sink, &session));
  EXPECT_TRUE(engine.callbacks[0].replayable_after_tokens);
  // Nothing to stream, no stop string, no first-token log: no work per token at all.
  EXPECT_FALSE(engine.callbacks[0].on_tokens);
  RequestResult result;
  result.output_ids = {7};
  engine.callbacks[0].on_done(result);
  sessions->Flush();
  std::lock_guard<std::mutex> lock(sink->mu);
  EXPECT_TRUE(sink->steps.empty());
  EXPECT_EQ(sink->finishes, 1);
}

TEST_F(SessionTest, RefusalsAreTyped) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  // The engine's queue-full hint arrives as its payload.
  absl::Status full = absl::ResourceExhaustedError("waiting queue is full; retry after 40 ms");
  SetRetryAfterMs(&full, 40);
  engine.refuse = full;
  std::optional<Refusal> r = Start(Ids({1}), true, sink, &session);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kQueueFull);
  EXPECT_EQ(r->retry_after_ms, 40);
  EXPECT_EQ(session, nullptr);
  engine.refuse = absl::OkStatus();
  // Validation in the caller's dialect, with the prompt's numbers.
  r = Start(Ids(std::vector<int32_t>(300, 1)), true, sink, &session);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kContextLength);
  EXPECT_EQ(r->prompt_tokens, 300);
  EXPECT_EQ(r->allowed_prompt_tokens, 255);
  // Draining.
  sessions->StartDrain();
  r = Start(Ids({1}), true, sink, &session);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kDraining);
  EXPECT_EQ(r->code, absl::StatusCode::kUnavailable);
  // Loading: no engine yet.
  RequestSessions loading{RequestSessionsOptions()};
  Admission admission;
  r = loading.Admit("c", &admission);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kUnavailable);
  EXPECT_EQ(r->message, "model is loading; retry later");
  EXPECT_EQ(r->retry_after_ms, 500);
  std::lock_guard<std::mutex> lock(sink->mu);
  EXPECT_EQ(sink->finishes, 0);  // refusals never reach the sink
}

TEST_F(SessionTest, PerClientCap) {
  RequestSessionsOptions options;
  options.client_quota = std::make_shared<ClientQuota>(1);
  Make(options);
  Admission first;
  ASSERT_FALSE(sessions->Admit("a", &first));
  Admission second;
  std::optional<Refusal> r = sessions->Admit("a", &second);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->kind, RefusalKind::kClientQuota);
  EXPECT_EQ(r->code, absl::StatusCode::kResourceExhausted);
  Admission other;
  EXPECT_FALSE(sessions->Admit("b", &other));
  first.quota.Release();
  Admission again;
  EXPECT_FALSE(sessions->Admit("a", &again));
}

TEST_F(SessionTest, LargePromptTextWaitsForTheTokenizeBudget) {
  auto budget = std::make_shared<ByteBudget>(1000);
  RequestSessionsOptions options;
  options.tokenize_budget = budget;
  options.tokenize_budget_min_bytes = 100;
  Make(options);
  SessionInfo info;
  info.request_id = "req";
  info.rpc = "test";
  auto validate = [&](GenerateRequest request) {
    Admission admission;
    EXPECT_FALSE(sessions->Admit("c", &admission));
    InferenceRequest out;
    return sessions->Validate(request, Dialect::kProto, admission, info, &out);
  };
  GenerateRequest large;
  large.messages.push_back({"user", std::string(600, 'a'), {}});
  GenerateRequest small;
  small.prompt = std::string(99, 'a');
  {
    std::shared_ptr<void> other = budget->TryAcquire(500);  // another prompt being tokenized
    ASSERT_NE(other, nullptr);
    std::optional<Refusal> r = validate(large);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->code, absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(r->kind, RefusalKind::kQueueFull);
    EXPECT_GT(r->retry_after_ms, 0);
    EXPECT_NE(r->message.find("600 bytes of prompt text"), std::string::npos) << r->message;
    // Under the size that counts: no tokenizer in this test, so refused for that, not the budget.
    std::optional<Refusal> s = validate(small);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->code, absl::StatusCode::kInvalidArgument) << s->message;
    EXPECT_EQ(budget->in_flight(), 500);
  }
  std::optional<Refusal> r = validate(large);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->code, absl::StatusCode::kInvalidArgument) << r->message;  // past the budget: no tokenizer
  EXPECT_EQ(budget->in_flight(), 0);                                     // the hold ends with the validation
}

TEST(ByteBudgetTest, ALargerRequestThanTheLimitPassesAloneOnly) {
  ByteBudget budget(100);
  std::shared_ptr<void> huge = budget.TryAcquire(250);
  ASSERT_NE(huge, nullptr);
  EXPECT_EQ(budget.TryAcquire(1), nullptr);
  huge.reset();
  std::shared_ptr<void> a = budget.TryAcquire(60);
  ASSERT_NE(a, nullptr);
  std::shared_ptr<void> b = budget.TryAcquire(40);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(budget.TryAcquire(1), nullptr);
  EXPECT_EQ(budget.in_flight(), 100);
  ByteBudget unlimited(0);
  EXPECT_NE(unlimited.TryAcquire(int64_t{1} << 40), nullptr);
  EXPECT_EQ(unlimited.in_flight(), 0);
}

TEST(ByteBudgetTest, AHoldGrowsWhileTheOthersLeaveRoomAndAloneWithoutLimit) {
  ByteBudget budget(100);
  {
    ByteBudget::Hold body(&budget);
    EXPECT_TRUE(body.Grow(70));
    std::shared_ptr<void> other = budget.TryAcquire(20);
    ASSERT_NE(other, nullptr);
    EXPECT_TRUE(body.Grow(10));   // 100 in all: at the limit
    EXPECT_FALSE(body.Grow(1));   // past it while another holds
    EXPECT_EQ(body.bytes(), 80);  // a refused step adds nothing
    EXPECT_EQ(budget.in_flight(), 100);
    other.reset();
    EXPECT_TRUE(body.Grow(500));  // alone: past the limit
    EXPECT_EQ(budget.TryAcquire(1), nullptr);
    EXPECT_EQ(budget.in_flight(), 580);
  }
  EXPECT_EQ(budget.in_flight(), 0);    // the hold gives back all it grew
  ByteBudget::Hold uncapped(nullptr);  // no budget: every size, nothing counted
  EXPECT_TRUE(uncapped.Grow(int64_t{1} << 40));
  EXPECT_EQ(uncapped.bytes(), 0);
}

TEST_F(SessionTest, CancelledByTheClientCountsCancelled) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(Ids({1}), true, sink, &session));
  session->Cancel();
  EXPECT_EQ(engine.cancelled, (std::vector<std::string>{session->engine_id()}));
  RequestResult result;
  result.status = absl::DeadlineExceededError("late");  // whatever the engine says, the client left
  engine.callbacks[0].on_done(result);
  sessions->Flush();
  std::lock_guard<std::mutex> lock(observer->mu);
  EXPECT_EQ(observer->codes, (std::vector<std::string>{"CANCELLED"}));
}

// A sink whose call ends while Finish decides how to count (its client left as the last step's
// ids went out: the stream's end reports it before Finish kept the result): the request is still
// counted, once, as its call ended. It went uncounted.
class EndsWhileFinishingSink final : public SessionSink {
 public:
  void OnStep(const std::vector<int32_t>&, const std::string&) override {}
  void OnFinish(const RequestResult&, const std::string&, const std::string&) override {}
  bool TakesFinishedLog(const RequestResult& result) override {
    if (session != nullptr) session->LogDeferredFinish(absl::StatusCode::kCancelled);  // the call ends here
    return result.status.ok();
  }
  RequestSession* session = nullptr;
};

TEST_F(SessionTest, AStreamThatEndsWhileItsResultIsKeptIsCountedAsItEnded) {
  auto sink = std::make_shared<EndsWhileFinishingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(Ids({1}), true, sink, &session));
  sink->session = session.get();
  RequestResult result;
  result.output_ids = {5, 6};
  result.finish_reason = FinishReason::kLength;
  engine.callbacks[0].on_done(result);
  sessions->Flush();
  {
    std::lock_guard<std::mutex> lock(observer->mu);
    EXPECT_EQ(observer->codes, (std::vector<std::string>{"CANCELLED"}));
  }
  session->LogDeferredFinish(absl::StatusCode::kCancelled);  // reported again: counted once still
  std::lock_guard<std::mutex> lock(observer->mu);
  EXPECT_EQ(observer->codes, (std::vector<std::string>{"CANCELLED"}));
}

// A client that leaves while its request's last step runs: the engine's OK for that step never
// reaches it, so it is counted as it left (it was counted OK, with a latency sample).
TEST_F(SessionTest, AClientGoneDuringTheLastStepIsCountedAsItLeft) {
  for (absl::StatusCode why : {absl::StatusCode::kCancelled, absl::StatusCode::kDeadlineExceeded}) {
    auto sink = std::make_shared<RecordingSink>();
    std::shared_ptr<RequestSession> session;
    ASSERT_FALSE(Start(Ids({1}), false, sink, &session));
    session->Cancel(why);
    RequestResult result;  // the engine finished the step the client left during
    result.output_ids = {5, 6};
    result.finish_reason = FinishReason::kLength;
    engine.callbacks.back().on_done(result);
    sessions->Flush();
    std::lock_guard<std::mutex> lock(sink->mu);
    EXPECT_EQ(sink->result.status.code(), why);
    EXPECT_EQ(sink->result.finish_reason,
              why == absl::StatusCode::kCancelled ? FinishReason::kCancelled : FinishReason::kDeadline);
  }
  std::lock_guard<std::mutex> lock(observer->mu);
  EXPECT_EQ(observer->codes, (std::vector<std::string>{"CANCELLED", "DEADLINE_EXCEEDED"}));
}

// gRPC and HTTP each have their RequestSessions over one engine: the same client request id on
// both at once must still give the engine two distinct ids (a clash failed the second INTERNAL).
TEST_F(SessionTest, EngineIdsAreUniqueAcrossFrontEndsSharingAnEngine) {
  RequestSessionsOptions options;
  options.log_requests = false;
  RequestSessions other(options);
  other.SetEngine(&engine);
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> first;
  ASSERT_FALSE(Start(Ids({1}), false, sink, &first));
  Admission admission;
  ASSERT_FALSE(other.Admit("c", &admission));
  SessionInfo info;
  info.request_id = "req";  // as Start's
  info.rpc = "test";
  InferenceRequest request;
  ASSERT_FALSE(other.Validate(Ids({1}), Dialect::kProto, admission, info, &request));
  std::shared_ptr<RequestSession> second;
  ASSERT_FALSE(
      other.Submit(admission, std::move(request), std::move(info), {}, std::make_shared<RecordingSink>(), &second));
  EXPECT_NE(first->engine_id(), second->engine_id());
  ASSERT_EQ(engine.requests.size(), 2u);
  EXPECT_NE(engine.requests[0].request_id, engine.requests[1].request_id);
  other.AbortAll();
  other.Flush();
}

// gRPC cancels a call itself at its deadline: such a call is counted DEADLINE_EXCEEDED, as its
// client saw it, even though the engine ended it as cancelled.
TEST_F(SessionTest, EndedAtItsDeadlineByTheTransportCountsDeadlineExceeded) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(Ids({1}), true, sink, &session));
  session->Cancel(absl::StatusCode::kDeadlineExceeded);
  RequestResult result;
  result.status = absl::CancelledError("cancelled");
  result.finish_reason = FinishReason::kCancelled;
  engine.callbacks[0].on_done(result);
  sessions->Flush();
  {
    std::lock_guard<std::mutex> lock(observer->mu);
    EXPECT_EQ(observer->codes, (std::vector<std::string>{"DEADLINE_EXCEEDED"}));
  }
  // Its result (the log line's message) names the deadline, not the engine's "cancelled".
  std::lock_guard<std::mutex> lock(sink->mu);
  EXPECT_EQ(sink->result.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(sink->result.status.message().find("deadline passed"), std::string::npos) << sink->result.status;
}

// Streaming and unary alike (a unary request after its first step hands the workers nothing: its
// record said 0 tokens after hundreds).
void ExpectAbortKeepsWhatWasGenerated(SessionTest& t, bool streaming) {
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(t.Start(t.Ids({1}), streaming, sink, &session));
  t.engine.callbacks[0].on_tokens({5, 6});
  t.engine.callbacks[0].on_tokens({7});
  t.sessions->Flush();
  std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a total time above the first token's
  t.sessions->AbortAll();
  std::lock_guard<std::mutex> lock(sink->mu);
  EXPECT_EQ(sink->finishes, 1);
  EXPECT_EQ(sink->result.status.code(), absl::StatusCode::kUnavailable);
  // Its log line and metrics report what the client was sent (or was to get) and when, not zeros.
  EXPECT_EQ(sink->result.output_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_GT(sink->result.ttft_ms, 0);
  EXPECT_GT(sink->result.total_ms, sink->result.ttft_ms);
}

TEST_F(SessionTest, AbortAllEndsWhatTheEngineNeverFinished) { ExpectAbortKeepsWhatWasGenerated(*this, true); }

// With request logs on (what reads the count; without them the engine tells a unary request no step).
TEST_F(SessionTest, AbortAllEndsAUnaryRequestWithItsTokens) {
  Make(RequestSessionsOptions(), /*log_requests=*/true);
  ExpectAbortKeepsWhatWasGenerated(*this, false);
}

TEST_F(SessionTest, StopStringCancelsAndCutsOffTheEngineThread) {
  auto tok = tokenizer::Tokenizer::FromDirectory(GLMSERVE_TEST_MODEL_DIR);
  ASSERT_TRUE(tok.ok()) << tok.status();
  std::shared_ptr<const tokenizer::Tokenizer> shared = std::move(*tok);
  sessions->SetTokenizer(shared);
  const std::vector<int32_t> hello = shared->Encode("hello", false);
  const std::vector<int32_t> world = shared->Encode(" world", false);
  ASSERT_FALSE(hello.empty());
  ASSERT_FALSE(world.empty());
  GenerateRequest request = Ids({1, 2});
  request.stop = {"world"};
  auto sink = std::make_shared<RecordingSink>();
  std::shared_ptr<RequestSession> session;
  ASSERT_FALSE(Start(request, /*streaming=*/true, sink, &session));
  RequestCallbacks& cb = engine.callbacks[0];
  std::vector<int32_t> all;
  for (const std::vector<int32_t>* part : {&hello, &world}) {
    for (int32_t id : *part) {
      cb.on_tokens({id});
      all.push_back(id);
    }
  }
  sessions->Flush();  // the worker matched the stop string and cancelled the engine request
  {
    std::lock_guard<std::mutex> lock(engine.mu);
    EXPECT_EQ(engine.cancelled, (std::vector<std::string>{session->engine_id()}));
  }
  RequestResult result;
  result.status = absl::CancelledError("cancelled");
  result.finish_reason = FinishReason::kCancelled;
  result.output_ids = all;
  result.output_ids.push_back(7);  // a step after the stop, before the cancel took effect
  cb.on_done(result);
  sessions->Flush();
  std::lock_guard<std::mutex> lock(sink->mu);
  ASSERT_EQ(sink->finishes, 1);
  EXPECT_TRUE(sink->result.status.ok());
  EXPECT_EQ(sink->result.finish_reason, FinishReason::kStop);
  EXPECT_EQ(sink->result.output_ids, all);
  EXPECT_EQ(sink->text.find("world"), std::string::npos);
  EXPECT_NE(sink->text.find("hello"), std::string::npos);
  std::lock_guard<std::mutex> olock(observer->mu);
  EXPECT_EQ(observer->codes, (std::vector<std::string>{"OK"}));
}

}  // namespace
}  // namespace glmserve
