// The gRPC service in-process: the real engine (runtime/engine) over tests/engine's deterministic
// FakeExecutor, the real GrpcServer on loopback port 0, and a C++ stub. No LibTorch, no model.
#include "server/frontend/grpc_service.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "runtime/engine/engine_impl.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/frontend/grpc_validation.h"
#include "server/request/auth.h"
#include "server/request/client_quota.h"
#include "tests/engine/fake_executor.h"
#include "tests/server/test_client.h"

namespace glmserve {
namespace {

using namespace std::chrono_literals;
using testing::HealthCheck;
using testing::MakeProtoRequest;
using testing::RunStream;
using testing::SetDeadline;

constexpr int32_t kVocab = 1000;
constexpr int32_t kMaxContext = 4096;

ModelInfo FakeModelInfo() {
  ModelInfo info;
  info.architecture = "fake";
  info.source_format = "none";
  info.compute_dtype = "float32";
  info.device = "cpu";
  info.parameter_count = 1234;
  info.vocab_size = kVocab;
  info.max_position_embeddings = kMaxContext;
  info.eos_token_ids = {2};
  return info;
}

// The codes calls finished with, as /metrics counts them (glmserve_requests_total{code}).
class CodeCounter final : public RequestObserver {
 public:
  void OnRequestFinished(const char* code, const RequestResult*) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[code];
  }
  // The count of `code` once `total` calls have finished (delivery is asynchronous), or -1.
  int CountOnceFinished(const std::string& code, int total) {
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < end) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        int finished = 0;
        for (const auto& [name, n] : counts_) finished += n;
        if (finished >= total) return counts_[code];
      }
      std::this_thread::sleep_for(2ms);
    }
    return -1;
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> counts_;
};

class GrpcServiceTest : public ::testing::Test {
 protected:
  void StartServer(EngineOptions engine_options = DefaultEngineOptions(),
                   GrpcServerOptions grpc_options = GrpcServerOptions()) {
    auto executor = std::make_unique<testing::FakeExecutor>(16, 1024, kVocab);
    auto engine = CreateInferenceEngine(engine_options, std::move(executor), FakeModelInfo());
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    grpc_options.host = "127.0.0.1";
    grpc_options.port = 0;
    grpc_options.build_version = "test";
    auto server = GrpcServer::Start(grpc_options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
    EXPECT_EQ(HealthCheck(channel_, ""), 2) << "NOT_SERVING before the engine is set";
    server_->SetEngine(engine_.get(), engine_options.scheduler.max_batch_size);
    server_->SetServing(true);
  }

  static EngineOptions DefaultEngineOptions() {
    EngineOptions o;
    o.scheduler.max_batch_size = 64;
    o.scheduler.faults.step_latency = std::chrono::microseconds(1000);  // 1 ms per step
    o.scheduler.log = [](const std::string&) {};
    return o;
  }

  void TearDown() override {
    if (engine_) engine_->Shutdown();
    if (server_) {
      server_->AbortAll();
      server_->Shutdown(1s);
    }
  }

  grpc::Status Unary(const v1::InferRequest& request, v1::InferResponse* response,
                     std::chrono::milliseconds deadline = 10s) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, deadline);
    return stub_->Infer(&ctx, request, response);
  }

  // Waits until the engine holds no request (capacity freed).
  bool EngineIdleWithin(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      EngineStats s = engine_->stats();
      if (s.running == 0 && s.waiting == 0) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }

  std::unique_ptr<InferenceEngine> engine_;
  std::unique_ptr<GrpcServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(GrpcServiceTest, UnaryAndStreamAgree) {
  StartServer();
  v1::InferRequest request = MakeProtoRequest({5, 6, 7}, 24);
  request.set_request_id("trace-abc");
  request.add_stop_token_ids(999);  // not the fake's output: finish by length
  v1::InferResponse unary;
  grpc::Status status = Unary(request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(unary.output_ids_size(), 24);
  EXPECT_EQ(unary.request_id(), "trace-abc");
  EXPECT_EQ(unary.finish_reason(), v1::LENGTH);
  EXPECT_EQ(unary.usage().prompt_tokens(), 3);
  EXPECT_EQ(unary.usage().completion_tokens(), 24);
  EXPECT_EQ(unary.usage().total_tokens(), 27);
  EXPECT_GT(unary.total_ms(), 0.0);
  EXPECT_GE(unary.total_ms(), unary.ttft_ms());
  EXPECT_GE(unary.ttft_ms(), unary.queue_ms());

  auto stream = RunStream(stub_.get(), request, 10s);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.ids, std::vector<int32_t>(unary.output_ids().begin(), unary.output_ids().end()));
  ASSERT_GE(stream.messages.size(), 2u);  // tokens arrive step by step, then the final message
  for (size_t i = 0; i < stream.messages.size(); ++i) {
    const auto& m = stream.messages[i];
    EXPECT_EQ(m.request_id(), "trace-abc");
    if (i + 1 < stream.messages.size()) {
      EXPECT_EQ(m.finish_reason(), v1::UNSPECIFIED);
      EXPECT_FALSE(m.has_usage());
    }
  }
  EXPECT_EQ(stream.messages.back().finish_reason(), v1::LENGTH);
  EXPECT_EQ(stream.messages.back().usage().completion_tokens(), 24);

  // Same request straight into the engine: the front end adds nothing and drops nothing.
  std::promise<RequestResult> direct;
  InferenceRequest engine_request;
  engine_request.request_id = "direct";
  engine_request.input_ids = {5, 6, 7};
  engine_request.params.max_new_tokens = 24;
  engine_request.params.stop_token_ids = {999};
  RequestCallbacks callbacks;
  callbacks.on_done = [&direct](const RequestResult& r) { direct.set_value(r); };
  ASSERT_TRUE(engine_->Submit(std::move(engine_request), std::move(callbacks)).ok());
  auto future = direct.get_future();
  ASSERT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(future.get().output_ids, stream.ids);
}

TEST_F(GrpcServiceTest, StopIdEndsWithStop) {
  StartServer();
  v1::InferResponse first;
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 8), &first).ok());
  // Stop on the 3rd generated id: output is cut right after it.
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 8);
  request.add_stop_token_ids(first.output_ids(2));
  v1::InferResponse stopped;
  ASSERT_TRUE(Unary(request, &stopped).ok());
  EXPECT_EQ(stopped.finish_reason(), v1::STOP);
  ASSERT_LE(stopped.output_ids_size(), 3);
  EXPECT_EQ(stopped.output_ids(stopped.output_ids_size() - 1), first.output_ids(2));
}

TEST_F(GrpcServiceTest, GeneratedRequestIdWhenEmpty) {
  StartServer();
  v1::InferResponse a, b;
  ASSERT_TRUE(Unary(MakeProtoRequest({1}, 2), &a).ok());
  ASSERT_TRUE(Unary(MakeProtoRequest({1}, 2), &b).ok());
  EXPECT_FALSE(a.request_id().empty());
  EXPECT_NE(a.request_id(), b.request_id());
  // An unset max_new_tokens means the default (256, shrunk to fit the context if needed).
  EXPECT_EQ(a.output_ids_size(), 2);
  v1::InferResponse d;
  v1::InferRequest unset = MakeProtoRequest({1}, 0);
  unset.clear_max_new_tokens();
  ASSERT_TRUE(Unary(unset, &d).ok());
  EXPECT_EQ(d.output_ids_size(), GrpcServerOptions().limits.default_max_new_tokens);
}

struct InvalidCase {
  const char* name;
  std::function<void(v1::InferRequest*)> mutate;
  const char* field;  // must appear in the message
};

TEST_F(GrpcServiceTest, InvalidArgumentsNameTheField) {
  StartServer();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<InvalidCase> cases = {
      {"empty input", [](v1::InferRequest* r) { r->clear_input_ids(); }, "input_ids"},
      {"prompt text",
       [](v1::InferRequest* r) {
         r->clear_input_ids();
         r->set_prompt("hi");
       },
       "no tokenizer"},
      {"messages",
       [](v1::InferRequest* r) {
         r->clear_input_ids();
         auto* m = r->add_messages();
         m->set_role("user");
         m->set_content("hi");
       },
       "messages: the server has no tokenizer"},
      {"stop strings", [](v1::InferRequest* r) { r->add_stop("x"); }, "stop:"},
      {"id negative", [](v1::InferRequest* r) { r->set_input_ids(1, -1); }, "input_ids[1]"},
      {"id >= vocab", [](v1::InferRequest* r) { r->add_input_ids(kVocab); }, "input_ids[3]"},
      {"max_new negative", [](v1::InferRequest* r) { r->set_max_new_tokens(-1); }, "max_new_tokens"},
      // Issue 3: max_new_tokens <= 0 and top_p out of (0, 1] are refused; unset is the default.
      {"max_new zero set", [](v1::InferRequest* r) { r->set_max_new_tokens(0); }, "max_new_tokens: 0 new tokens"},
      {"top_p zero set", [](v1::InferRequest* r) { r->set_top_p(0.0f); }, "top_p: 0 is outside (0, 1]"},
      {"max_new above cap", [](v1::InferRequest* r) { r->set_max_new_tokens(4097); }, "max_new_tokens"},
      {"prompt + max_new beyond context",
       [](v1::InferRequest* r) {
         r->clear_input_ids();
         for (int i = 0; i < kMaxContext - 10; ++i) r->add_input_ids(1);
         r->set_max_new_tokens(100);
       },
       "max context"},
      {"prompt alone too long",
       [](v1::InferRequest* r) {
         for (int i = 0; i < kMaxContext; ++i) r->add_input_ids(1);
       },
       "input_ids"},
      {"min > max", [](v1::InferRequest* r) { r->set_min_new_tokens(9); }, "min_new_tokens"},
      {"min negative", [](v1::InferRequest* r) { r->set_min_new_tokens(-1); }, "min_new_tokens"},
      {"temperature negative", [](v1::InferRequest* r) { r->set_temperature(-0.5f); }, "temperature"},
      {"temperature NaN", [nan](v1::InferRequest* r) { r->set_temperature(nan); }, "temperature"},
      {"temperature inf", [](v1::InferRequest* r) { r->set_temperature(std::numeric_limits<float>::infinity()); },
       "temperature"},
      {"top_p > 1", [](v1::InferRequest* r) { r->set_top_p(1.5f); }, "top_p"},
      {"top_p negative", [](v1::InferRequest* r) { r->set_top_p(-0.1f); }, "top_p"},
      {"top_p NaN", [nan](v1::InferRequest* r) { r->set_top_p(nan); }, "top_p"},
      {"top_k negative", [](v1::InferRequest* r) { r->set_top_k(-1); }, "top_k"},
      {"frequency_penalty > 2", [](v1::InferRequest* r) { r->set_frequency_penalty(2.5f); },
       "frequency_penalty: 2.5 is outside [-2, 2]"},
      {"frequency_penalty < -2", [](v1::InferRequest* r) { r->set_frequency_penalty(-3.0f); },
       "frequency_penalty: -3 is outside [-2, 2]"},
      {"frequency_penalty NaN", [nan](v1::InferRequest* r) { r->set_frequency_penalty(nan); }, "frequency_penalty"},
      {"presence_penalty > 2", [](v1::InferRequest* r) { r->set_presence_penalty(2.01f); }, "presence_penalty"},
      {"presence_penalty inf",
       [](v1::InferRequest* r) { r->set_presence_penalty(-std::numeric_limits<float>::infinity()); },
       "presence_penalty: -inf is outside [-2, 2]"},
      {"repetition_penalty negative", [](v1::InferRequest* r) { r->set_repetition_penalty(-1.0f); },
       "repetition_penalty: -1 is outside (0, 10]"},
      {"repetition_penalty > 10", [](v1::InferRequest* r) { r->set_repetition_penalty(10.5f); },
       "repetition_penalty: 10.5 is outside (0, 10]"},
      {"repetition_penalty NaN", [nan](v1::InferRequest* r) { r->set_repetition_penalty(nan); }, "repetition_penalty"},
      {"stop id outside vocab", [](v1::InferRequest* r) { r->add_stop_token_ids(kVocab + 5); }, "stop_token_ids[0]"},
      {"request_id with space", [](v1::InferRequest* r) { r->set_request_id("a b"); }, "request_id"},
      {"request_id too long", [](v1::InferRequest* r) { r->set_request_id(std::string(200, 'x')); }, "request_id"},
  };
  for (const auto& c : cases) {
    v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 8);
    c.mutate(&request);
    v1::InferResponse response;
    grpc::Status unary = Unary(request, &response);
    EXPECT_EQ(unary.error_code(), grpc::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(unary.error_message().find(c.field), std::string::npos) << c.name << ": " << unary.error_message();
    auto stream = RunStream(stub_.get(), request, 5s);
    EXPECT_EQ(stream.status.error_code(), grpc::INVALID_ARGUMENT) << c.name;
    EXPECT_TRUE(stream.messages.empty()) << c.name;
  }
  // Range is in the message, e.g. max_new_tokens.
  v1::InferRequest request = MakeProtoRequest({1}, -1);
  v1::InferResponse response;
  EXPECT_NE(Unary(request, &response).error_message().find("[1, 4096]"), std::string::npos);
  // Still serving afterwards.
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 4), &response).ok());
  EXPECT_EQ(response.output_ids_size(), 4);
}

// seed unset: each request gets a seed of its own (they were all 0, so every unseeded sampled
// request gave the same ids); set, even to 0, it is taken as given.
TEST(GrpcValidation, UnsetSeedIsDrawnPerRequestAndASetZeroIsKept) {
  ValidationModel model;
  model.vocab_size = kVocab;
  model.max_context = kMaxContext;
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 8);
  request.set_temperature(1.0f);
  std::set<uint64_t> drawn;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<InferenceRequest> unseeded = ValidateInferRequest(request, FrontendLimits(), model);
    ASSERT_TRUE(unseeded.ok()) << unseeded.status();
    drawn.insert(unseeded->params.sampling.seed);
  }
  EXPECT_EQ(drawn.size(), 4u);
  request.set_seed(0);
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<InferenceRequest> zero = ValidateInferRequest(request, FrontendLimits(), model);
    ASSERT_TRUE(zero.ok()) << zero.status();
    EXPECT_EQ(zero->params.sampling.seed, 0u);
  }
}

// The penalty fields reach the engine's SamplingParams; repetition_penalty 0 (unset) means 1.
TEST(GrpcValidation, PenaltiesMapToSamplingParams) {
  ValidationModel model;
  model.vocab_size = kVocab;
  model.max_context = kMaxContext;
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 8);
  absl::StatusOr<InferenceRequest> plain = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->params.sampling.frequency_penalty, 0.0f);
  EXPECT_EQ(plain->params.sampling.presence_penalty, 0.0f);
  EXPECT_EQ(plain->params.sampling.repetition_penalty, 1.0f);
  EXPECT_FALSE(plain->params.sampling.has_penalties());

  request.set_frequency_penalty(0.2f);
  request.set_presence_penalty(-2.0f);
  request.set_repetition_penalty(1.3f);
  absl::StatusOr<InferenceRequest> set = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->params.sampling.frequency_penalty, 0.2f);
  EXPECT_EQ(set->params.sampling.presence_penalty, -2.0f);
  EXPECT_EQ(set->params.sampling.repetition_penalty, 1.3f);
  EXPECT_TRUE(set->params.sampling.has_penalties());

  // The edges are inside.
  request.set_frequency_penalty(2.0f);
  request.set_repetition_penalty(10.0f);
  EXPECT_TRUE(ValidateInferRequest(request, FrontendLimits(), model).ok());
  request.set_repetition_penalty(0.01f);
  EXPECT_TRUE(ValidateInferRequest(request, FrontendLimits(), model).ok());
}

TEST_F(GrpcServiceTest, PenaltiesAccepted) {
  StartServer();
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 4);
  request.set_frequency_penalty(0.2f);
  request.set_presence_penalty(0.1f);
  request.set_repetition_penalty(1.1f);
  v1::InferResponse response;
  grpc::Status s = Unary(request, &response);
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_EQ(response.output_ids_size(), 4);
}

// Past its deadline a call ends DEADLINE_EXCEEDED for the client and in the server's counts
// alike, whether the engine saw the deadline first or gRPC cancelled the call at it.
TEST_F(GrpcServiceTest, DeadlineExceededFreesCapacity) {
  auto codes = std::make_shared<CodeCounter>();
  GrpcServerOptions options;
  options.observer = codes;
  StartServer(DefaultEngineOptions(), options);
  v1::InferResponse response;
  const auto start = std::chrono::steady_clock::now();
  grpc::Status status = Unary(MakeProtoRequest({1, 2}, 3000), &response, 150ms);
  EXPECT_EQ(status.error_code(), grpc::DEADLINE_EXCEEDED);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  EXPECT_TRUE(EngineIdleWithin(1s)) << "the expired request still holds the engine";
  auto stream = RunStream(stub_.get(), MakeProtoRequest({1, 2}, 3000), 150ms);
  EXPECT_EQ(stream.status.error_code(), grpc::DEADLINE_EXCEEDED);
  EXPECT_TRUE(EngineIdleWithin(1s));
  EXPECT_EQ(codes->CountOnceFinished("DEADLINE_EXCEEDED", 2), 2) << "counted as the client saw it";
  const auto next = std::chrono::steady_clock::now();
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2}, 4), &response, 2s).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - next, 1s);
}

// A stream cut off by its deadline after messages went out ends with a last message, finish_reason
// DEADLINE and the usage of what was generated, then DEADLINE_EXCEEDED: the client learns what it
// used (before, the status came alone). The server's default deadline applies: the client set none,
// so gRPC's transport leaves the call open for that message.
TEST_F(GrpcServiceTest, StreamPastItsDeadlineEndsWithItsUsage) {
  GrpcServerOptions options;
  options.default_deadline_ms = 400;
  StartServer(DefaultEngineOptions(), options);
  grpc::ClientContext ctx;
  auto reader = stub_->InferStream(&ctx, MakeProtoRequest({1, 2}, 3000));
  std::vector<v1::InferResponse> messages;
  size_t ids = 0;
  v1::InferResponse message;
  while (reader->Read(&message)) {
    ids += message.output_ids_size();
    messages.push_back(message);
  }
  const grpc::Status status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::DEADLINE_EXCEEDED) << status.error_message();
  ASSERT_GE(messages.size(), 2u) << "tokens streamed before the deadline";
  const v1::InferResponse& last = messages.back();
  EXPECT_EQ(last.finish_reason(), v1::DEADLINE);
  EXPECT_EQ(last.usage().prompt_tokens(), 2);
  EXPECT_EQ(static_cast<size_t>(last.usage().completion_tokens()), ids);
  EXPECT_LT(ids, 3000u);
  for (size_t i = 0; i + 1 < messages.size(); ++i) EXPECT_EQ(messages[i].finish_reason(), v1::UNSPECIFIED) << i;
}

// A deadline ~292 years away (grpc-go's for none: `grpc-timeout: 2562047H`) once wrapped in the
// server's conversion to nanoseconds and failed the call at once as past its deadline.
TEST_F(GrpcServiceTest, FarDeadlineIsNoDeadline) {
  StartServer();
  for (int64_t hours : {int64_t{2562047}, int64_t{2000000}, int64_t{1}}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(hours * 3600, GPR_TIMESPAN)));
    v1::InferResponse response;
    const grpc::Status status = stub_->Infer(&ctx, MakeProtoRequest({1, 2, 3}, 4), &response);
    EXPECT_TRUE(status.ok()) << hours << " h: " << status.error_message();
    EXPECT_EQ(response.output_ids_size(), 4) << hours << " h";
  }
}

TEST_F(GrpcServiceTest, ClientCancelFreesCapacity) {
  auto codes = std::make_shared<CodeCounter>();
  GrpcServerOptions options;
  options.observer = codes;
  StartServer(DefaultEngineOptions(), options);
  {  // unary
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 30s);
    v1::InferResponse response;
    std::thread canceller([&ctx] {
      std::this_thread::sleep_for(100ms);
      ctx.TryCancel();
    });
    grpc::Status status = stub_->Infer(&ctx, MakeProtoRequest({3, 4}, 3000), &response);
    canceller.join();
    EXPECT_EQ(status.error_code(), grpc::CANCELLED);
    EXPECT_TRUE(EngineIdleWithin(1s)) << "a cancelled unary call still holds the engine";
  }
  {  // stream: read a few messages, then cancel
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 30s);
    auto reader = stub_->InferStream(&ctx, MakeProtoRequest({3, 4}, 3000));
    v1::InferResponse message;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&message));
    ctx.TryCancel();
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
    EXPECT_TRUE(EngineIdleWithin(1s)) << "a cancelled stream still holds the engine";
  }
  EXPECT_EQ(codes->CountOnceFinished("CANCELLED", 2), 2);
  v1::InferResponse response;
  const auto next = std::chrono::steady_clock::now();
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2}, 4), &response, 2s).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - next, 1s);
}

TEST_F(GrpcServiceTest, QueueFullIsResourceExhaustedWithRetryHint) {
  EngineOptions options = DefaultEngineOptions();
  options.scheduler.max_batch_size = 1;
  options.max_queued_requests = 1;
  StartServer(options);
  // One running + one queued fill the engine; the third is refused at once.
  std::vector<std::thread> holders;
  std::atomic<int> cancelled{0};
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetDeadline(contexts.back().get(), 30s);
  }
  for (int i = 0; i < 2; ++i) {
    holders.emplace_back([this, i, &contexts, &cancelled] {
      v1::InferResponse response;
      if (stub_->Infer(contexts[i].get(), MakeProtoRequest({1, 2}, 3000), &response).error_code() == grpc::CANCELLED) {
        ++cancelled;
      }
    });
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (engine_->stats().running + engine_->stats().waiting < i + 1 && std::chrono::steady_clock::now() < end) {
      std::this_thread::sleep_for(2ms);
    }
  }
  v1::InferResponse response;
  grpc::Status status = Unary(MakeProtoRequest({1, 2}, 4), &response, 5s);
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("retry after"), std::string::npos) << status.error_message();
  for (auto& ctx : contexts) ctx->TryCancel();
  for (auto& t : holders) t.join();
  EXPECT_EQ(cancelled.load(), 2);
  EXPECT_TRUE(EngineIdleWithin(1s));
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2}, 4), &response, 5s).ok());
}

// While the model loads, a call is refused UNAVAILABLE with gRPC's retry pushback, and a client
// under a retry policy whose own backoff would be spent in ~0.15 s (deploy/grpc-service-config.json's
// attempts, shorter backoffs) waits the server's 500 ms between attempts instead, so a call sent
// during a ~0.7 s load is answered once the engine is set.
TEST_F(GrpcServiceTest, LoadingRefusalTellsRetryingClientsWhenToComeBack) {
  auto executor = std::make_unique<testing::FakeExecutor>(16, 1024, kVocab);
  auto engine = CreateInferenceEngine(DefaultEngineOptions(), std::move(executor), FakeModelInfo());
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine_ = std::move(*engine);
  GrpcServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  auto server = GrpcServer::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  server_ = std::move(*server);
  stub_ = v1::Inference::NewStub(grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));

  grpc::ClientContext plain;
  SetDeadline(&plain, 10s);
  v1::InferResponse response;
  const grpc::Status refused = stub_->Infer(&plain, MakeProtoRequest({1, 2}, 2), &response);
  EXPECT_EQ(refused.error_code(), grpc::UNAVAILABLE);
  EXPECT_EQ(refused.error_message(), "model is loading; retry later");
  const auto& trailers = plain.GetServerTrailingMetadata();
  const auto pushback = trailers.find("grpc-retry-pushback-ms");
  ASSERT_NE(pushback, trailers.end()) << "no retry pushback on the loading refusal";
  EXPECT_EQ(std::string(pushback->second.data(), pushback->second.size()), "500");

  grpc::ChannelArguments args;
  args.SetServiceConfigJSON(R"({"methodConfig": [{"name": [{"service": "glmserve.v1.Inference"}],
      "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.08s",
                      "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})");
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 1);
  auto retrying =
      v1::Inference::NewStub(grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args));
  std::promise<grpc::Status> answered;
  std::thread client([&] {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 10s);
    v1::InferResponse r;
    answered.set_value(retrying->Infer(&ctx, MakeProtoRequest({1, 2}, 2), &r));
  });
  std::this_thread::sleep_for(700ms);  // the load
  server_->SetEngine(engine_.get(), 64);
  server_->SetServing(true);
  const grpc::Status status = answered.get_future().get();
  client.join();
  EXPECT_TRUE(status.ok()) << status.error_code() << ": " << status.error_message();
}

TEST_F(GrpcServiceTest, SixtyFourConcurrentClients) {
  StartServer();
  constexpr int kClients = 64;
  std::vector<std::vector<int32_t>> expected(kClients);
  for (int i = 0; i < kClients; ++i) {
    v1::InferResponse response;
    ASSERT_TRUE(Unary(MakeProtoRequest({i + 1, 2 * i + 3, 7}, 12 + i % 5), &response).ok());
    expected[i].assign(response.output_ids().begin(), response.output_ids().end());
  }
  std::vector<std::thread> threads;
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<grpc::Status> statuses(kClients);
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      // Each client its own channel: 64 connections, half unary and half streaming.
      auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
      auto stub = v1::Inference::NewStub(channel);
      v1::InferRequest request = MakeProtoRequest({i + 1, 2 * i + 3, 7}, 12 + i % 5);
      if (i % 2 == 0) {
        grpc::ClientContext ctx;
        SetDeadline(&ctx, 30s);
        v1::InferResponse response;
        statuses[i] = stub->Infer(&ctx, request, &response);
        got[i].assign(response.output_ids().begin(), response.output_ids().end());
      } else {
        auto stream = RunStream(stub.get(), request, 30s);
        statuses[i] = stream.status;
        got[i] = stream.ids;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(got[i], expected[i]) << "client " << i;
  }
}

// A request over --max-message-bytes is INVALID_ARGUMENT from the service (counted, logged, not
// retried), not gRPC's own RESOURCE_EXHAUSTED, which clients' retry policies retry; only past
// twice the limit does gRPC refuse it itself.
TEST_F(GrpcServiceTest, OversizeRequestIsInvalidArgumentUpToTwiceTheLimit) {
  GrpcServerOptions options;
  options.max_message_bytes = 64 << 10;
  StartServer(DefaultEngineOptions(), options);
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 4);
  request.set_prompt(std::string(100 << 10, 'a'));
  v1::InferResponse response;
  grpc::Status status = Unary(request, &response);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT) << status.error_message();
  EXPECT_NE(status.error_message().find("--max-message-bytes"), std::string::npos) << status.error_message();
  request.set_prompt(std::string(200 << 10, 'a'));
  status = Unary(request, &response);
  EXPECT_EQ(status.error_code(), grpc::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 4), &response).ok());
}

TEST_F(GrpcServiceTest, ModelInfo) {
  StartServer();
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 5s);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture(), "fake");
  EXPECT_EQ(info.vocab_size(), kVocab);
  EXPECT_EQ(info.max_context(), kMaxContext);
  EXPECT_EQ(info.max_batch(), 64);
  EXPECT_EQ(info.parameter_count(), 1234);
  ASSERT_EQ(info.eos_token_ids_size(), 1);
  EXPECT_EQ(info.build_version(), "test");
}

TEST_F(GrpcServiceTest, HealthAndDrain) {
  StartServer();
  EXPECT_EQ(HealthCheck(channel_, ""), 1);
  EXPECT_EQ(HealthCheck(channel_, "glmserve.v1.Inference"), 1);
  // A stream in flight (~300 steps of 1 ms) when the drain starts finishes completely.
  std::promise<testing::StreamResult> in_flight;
  std::thread client([&] { in_flight.set_value(RunStream(stub_.get(), MakeProtoRequest({9}, 300), 20s)); });
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (engine_->stats().running == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_EQ(engine_->stats().running, 1);
  server_->StartDrain();
  EXPECT_EQ(HealthCheck(channel_, ""), 2);
  EXPECT_EQ(HealthCheck(channel_, "glmserve.v1.Inference"), 2);
  v1::InferResponse response;
  EXPECT_EQ(Unary(MakeProtoRequest({1}, 2), &response).error_code(), grpc::UNAVAILABLE);
  EXPECT_TRUE(server_->WaitIdle(10s));
  client.join();
  auto result = in_flight.get_future().get();
  EXPECT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids.size(), 300u);
}

}  // namespace
}  // namespace glmserve

namespace glmserve {
namespace {

// The bundled model's tokenizer over the fake engine (vocab 1000: plain-text prompts only, since
// GLM-4's special tokens are ids 1000+).
class GrpcTextTest : public GrpcServiceTest {
 protected:
  void StartWithTokenizer() {
    StartServer();
    auto tok = tokenizer::Tokenizer::FromDirectory(GLMSERVE_TEST_MODEL_DIR);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = std::shared_ptr<const tokenizer::Tokenizer>(std::move(*tok));
    server_->SetTokenizer(tokenizer_);
  }
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
};

TEST_F(GrpcTextTest, PromptTextAndStopStrings) {
  StartWithTokenizer();
  v1::InferRequest request;
  request.set_prompt("hello world");
  request.set_max_new_tokens(40);
  request.add_stop_token_ids(999);
  v1::InferResponse unary;
  grpc::Status status = Unary(request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(unary.usage().prompt_tokens(), static_cast<int>(tokenizer_->Encode("hello world").size()));
  const std::vector<int32_t> ids(unary.output_ids().begin(), unary.output_ids().end());
  ASSERT_EQ(ids.size(), 40u);
  EXPECT_EQ(unary.text(), tokenizer_->Decode(ids));
  ASSERT_GT(unary.text().size(), 8u);

  // Streaming: deltas concatenate to the unary text; each one is valid UTF-8.
  auto stream = RunStream(stub_.get(), request, 10s);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  std::string streamed;
  for (const auto& m : stream.messages) {
    EXPECT_EQ(tokenizer::SanitizeUtf8(m.text()), m.text());
    streamed += m.text();
  }
  EXPECT_EQ(streamed, unary.text());

  // A stop string from the middle of that text: text ends before it, finish STOP, ids a prefix.
  size_t start = unary.text().size() / 2;
  while (start > 0 && (static_cast<unsigned char>(unary.text()[start]) & 0xC0) == 0x80) --start;
  const std::string stop = unary.text().substr(start, 1);
  const size_t at = unary.text().find(stop);
  request.add_stop(stop);
  v1::InferResponse stopped;
  status = Unary(request, &stopped);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(stopped.finish_reason(), v1::STOP);
  EXPECT_EQ(stopped.text(), unary.text().substr(0, at));
  ASSERT_LE(stopped.output_ids_size(), unary.output_ids_size());
  for (int i = 0; i < stopped.output_ids_size(); ++i) EXPECT_EQ(stopped.output_ids(i), unary.output_ids(i));
  auto stream_stopped = RunStream(stub_.get(), request, 10s);
  ASSERT_TRUE(stream_stopped.status.ok()) << stream_stopped.status.error_message();
  std::string text;
  for (const auto& m : stream_stopped.messages) text += m.text();
  EXPECT_EQ(text, stopped.text());
  EXPECT_EQ(stream_stopped.ids, std::vector<int32_t>(stopped.output_ids().begin(), stopped.output_ids().end()));
  EXPECT_EQ(stream_stopped.messages.back().finish_reason(), v1::STOP);
}

// The bundled model's tokenizer in a validation model of 1,024 ids (GLM-4's specials are 1000+).
struct TokenizerModel {
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  ValidationModel model;
};
TokenizerModel LoadTokenizerModel() {
  TokenizerModel m;
  auto tok = tokenizer::Tokenizer::FromDirectory(GLMSERVE_TEST_MODEL_DIR);
  EXPECT_TRUE(tok.ok()) << tok.status();
  if (tok.ok()) m.tokenizer = std::move(*tok);
  m.model.vocab_size = 1024;
  m.model.tokenizer = m.tokenizer.get();
  return m;
}

TEST(DefaultStopIds, TokenizerEndOfTurnIdsJoinTheModelsEos) {
  TokenizerModel loaded = LoadTokenizerModel();
  ASSERT_NE(loaded.tokenizer, nullptr);
  ValidationModel& model = loaded.model;
  model.eos_token_ids = {1000};  // a config with only <|endoftext|> (like ChatGLM3's </s>)
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 4);
  auto out = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->params.stop_token_ids, (std::vector<int32_t>{1000, 1007, 1009}));
  model.eos_token_ids = {1000, 1007, 1009};  // already complete (GLM-4): engine default, unchanged
  out = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->params.stop_token_ids.empty());
  request.add_stop_token_ids(7);  // explicit ids win
  out = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->params.stop_token_ids, (std::vector<int32_t>{7}));
}

// Prompt text that could not fit the context even at 64 bytes a token is refused before the
// tokenizer runs (gRPC tokenizes on its callback threads, which serve every other call), naming
// the prompt or the longest message.
TEST(GrpcValidation, PromptTextTooLongRefusedBeforeTokenizing) {
  TokenizerModel loaded = LoadTokenizerModel();
  ASSERT_NE(loaded.tokenizer, nullptr);
  ValidationModel& model = loaded.model;
  model.max_context = 64;
  const int32_t max_prompt = MaxPromptTokens(FrontendLimits(), model);
  ASSERT_GT(max_prompt, 0);
  v1::InferRequest request;
  request.set_prompt(std::string(static_cast<size_t>(max_prompt) * 64 + 1, '='));
  auto out = ValidateInferRequest(request, FrontendLimits(), model);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("prompt: "), std::string::npos) << out.status();
  EXPECT_NE(out.status().message().find("refused before tokenizing"), std::string::npos) << out.status();
  v1::InferRequest chat;
  chat.add_messages()->set_role("system");
  chat.mutable_messages(0)->set_content("short");
  chat.add_messages()->set_role("user");
  chat.mutable_messages(1)->set_content(std::string(static_cast<size_t>(max_prompt) * 64, 'a'));
  out = ValidateInferRequest(chat, FrontendLimits(), model);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("messages[1].content"), std::string::npos) << out.status();
  // At the bound it is tokenized (and refused, if at all, by its token count).
  request.set_prompt(std::string(static_cast<size_t>(max_prompt) * 64, '='));
  out = ValidateInferRequest(request, FrontendLimits(), model);
  if (!out.ok()) {
    EXPECT_EQ(out.status().message().find("before tokenizing"), std::string::npos) << out.status();
  }
}

TEST_F(GrpcTextTest, ChatMessagesValidated) {
  StartWithTokenizer();
  v1::InferRequest request;
  auto* m = request.add_messages();
  m->set_role("wizard");
  m->set_content("hi");
  v1::InferResponse response;
  grpc::Status status = Unary(request, &response);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("messages[0].role"), std::string::npos);
  // Valid roles tokenize to GLM-4's special ids, outside the fake's 1000-id vocabulary.
  m->set_role("user");
  status = Unary(request, &response);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("messages[0]: 1002"), std::string::npos) << status.error_message();
  request.set_prompt("also");
  status = Unary(request, &response);
  EXPECT_NE(status.error_message().find("not both"), std::string::npos);
}

// --api-key-file: Inference and GetModelInfo need `authorization: Bearer KEY`; health stays open.
TEST_F(GrpcServiceTest, ApiKeysRequiredHealthOpen) {
  GrpcServerOptions options;
  options.api_keys = ApiKeys::FromKeys({"k-one", "k-two"});
  StartServer(DefaultEngineOptions(), options);
  v1::InferResponse response;
  grpc::Status none = Unary(MakeProtoRequest({1, 2}, 2), &response);
  EXPECT_EQ(none.error_code(), grpc::UNAUTHENTICATED) << none.error_message();
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer k-wrong");
    grpc::Status wrong = stub_->Infer(&ctx, MakeProtoRequest({1, 2}, 2), &response);
    EXPECT_EQ(wrong.error_code(), grpc::UNAUTHENTICATED);
    EXPECT_EQ(wrong.error_message().find("k-wrong"), std::string::npos);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer k-two");
    EXPECT_TRUE(stub_->Infer(&ctx, MakeProtoRequest({1, 2}, 2), &response).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfo info;
    EXPECT_EQ(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).error_code(), grpc::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    auto reader = stub_->InferStream(&ctx, MakeProtoRequest({1, 2}, 2));
    v1::InferResponse m;
    while (reader->Read(&m)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::UNAUTHENTICATED);
  }
  EXPECT_EQ(HealthCheck(channel_, ""), 1) << "health answers without a key";
}

// --max-requests-per-client: a client over its cap is refused at once while the engine has room;
// finished, refused and cancelled calls all give their place back.
TEST_F(GrpcServiceTest, PerClientCapIsResourceExhausted) {
  auto quota = std::make_shared<ClientQuota>(2);
  GrpcServerOptions options;
  options.client_quota = quota;
  StartServer(DefaultEngineOptions(), options);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::InferResponse>>> readers;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    SetDeadline(contexts.back().get(), 30s);
    readers.push_back(stub_->InferStream(contexts.back().get(), MakeProtoRequest({1, 2}, 3000)));
    v1::InferResponse m;
    ASSERT_TRUE(readers.back()->Read(&m));
  }
  EXPECT_EQ(quota->in_flight("127.0.0.1"), 2);
  v1::InferResponse response;
  grpc::Status over = Unary(MakeProtoRequest({1, 2}, 2), &response, 5s);
  EXPECT_EQ(over.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(over.error_message().find("--max-requests-per-client"), std::string::npos) << over.error_message();
  for (auto& ctx : contexts) ctx->TryCancel();
  for (auto& r : readers) {
    v1::InferResponse m;
    while (r->Read(&m)) {
    }
    r->Finish();
  }
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (quota->in_flight("127.0.0.1") > 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(quota->in_flight("127.0.0.1"), 0) << "cancelled calls keep their place";
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Unary(MakeProtoRequest({1, 2}, 2), &response, 5s).ok());
  EXPECT_EQ(quota->clients(), 0u) << "finished calls keep their place";
}

}  // namespace
}  // namespace glmserve
