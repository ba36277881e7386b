// End to end: the real `glmserve serve` binary on loopback (--port 0) with the bundled tiny model,
// driven by a C++ stub. Results are compared with `glmserve generate --json`.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/server/test_client.h"
#include "tests/testutil/server_process.h"

namespace glmserve {
namespace {

using namespace std::chrono_literals;
using testing::HealthCheck;
using testing::MakeProtoRequest;
using testing::RunCommand;
using testing::RunStream;
using testing::ServerProcess;
using testing::SetDeadline;

constexpr char kBinary[] = GLMSERVE_BINARY;
constexpr char kModel[] = GLMSERVE_TEST_MODEL_DIR;

// `glmserve generate --json` output_ids for the same greedy request.
std::vector<int32_t> Generate(const std::vector<int32_t>& ids, int max_new) {
  std::string list;
  for (size_t i = 0; i < ids.size(); ++i) list += (i ? "," : "") + std::to_string(ids[i]);
  const std::string out =
      RunCommand(std::string("timeout 120 ") + kBinary + " generate --model " + kModel + " --input-ids " + list +
                 " --max-new-tokens " + std::to_string(max_new) + " --json 2>/dev/null");
  auto j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("output_ids")) return {};
  return j["output_ids"].get<std::vector<int32_t>>();
}

// `glmserve <args> --json` -> the parsed JSON line (discarded on failure).
nlohmann::json RunJson(const std::string& args) {
  const std::string out = RunCommand(std::string("timeout 120 ") + kBinary + " " + args + " --json 2>/dev/null");
  return nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
}

class ServeIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(std::string(kModel) + "/config.json")) {
      GTEST_SKIP() << "no test model at " << kModel;
    }
  }
  void Start(std::vector<std::string> flags = {}) {
    server_ = std::make_unique<ServerProcess>(kBinary, kModel, flags);
    port_ = server_->WaitServing(120s);
    ASSERT_GT(port_, 0) << server_->log();
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
    stub_ = v1::Inference::NewStub(channel_);
  }
  grpc::Status Unary(const v1::InferRequest& request, v1::InferResponse* response,
                     std::chrono::milliseconds deadline = 30s) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, deadline);
    return stub_->Infer(&ctx, request, response);
  }
  static std::vector<int32_t> Ids(const v1::InferResponse& r) { return {r.output_ids().begin(), r.output_ids().end()}; }
  // Bodies of tests that run once per server configuration.
  void CheckDeadlineAndCancelFreeCapacity();
  void CheckSixtyFourConcurrentClients();

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(ServeIntegrationTest, UnaryAndStreamEqualGenerate) {
  Start();
  EXPECT_EQ(HealthCheck(channel_, ""), 1) << "SERVING once 'serving on' is logged";
  EXPECT_EQ(HealthCheck(channel_, "glmserve.v1.Inference"), 1);
  for (const auto& prompt : std::vector<std::vector<int32_t>>{{1, 2, 3}, {100, 200, 300, 400, 17}}) {
    const std::vector<int32_t> expected = Generate(prompt, 12);
    ASSERT_FALSE(expected.empty()) << "glmserve generate gave no output_ids";
    v1::InferResponse unary;
    grpc::Status status = Unary(MakeProtoRequest(prompt, 12), &unary);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(Ids(unary), expected);
    EXPECT_NE(unary.finish_reason(), v1::UNSPECIFIED);
    EXPECT_EQ(unary.usage().prompt_tokens(), static_cast<int>(prompt.size()));
    auto stream = RunStream(stub_.get(), MakeProtoRequest(prompt, 12), 30s);
    ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
    EXPECT_EQ(stream.ids, expected);
    EXPECT_EQ(stream.messages.back().finish_reason(), unary.finish_reason());
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, 5s);
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.architecture(), "glm4");
  EXPECT_EQ(info.vocab_size(), 1024);
  EXPECT_EQ(info.max_context(), 2048);
}

TEST_F(ServeIntegrationTest, InvalidInputsAreRejected) {
  Start();
  struct Case {
    std::function<void(v1::InferRequest*)> mutate;
    const char* field;
  };
  const std::vector<Case> cases = {
      {[](v1::InferRequest* r) { r->clear_input_ids(); }, "input_ids"},
      {[](v1::InferRequest* r) {
         r->clear_input_ids();
         auto* m = r->add_messages();
         m->set_role("bot");
         m->set_content("hello");
       },
       "messages[0].role"},
      {[](v1::InferRequest* r) { r->add_stop(""); }, "stop[0]"},
      {[](v1::InferRequest* r) { r->add_input_ids(1024); }, "input_ids[3]"},
      {[](v1::InferRequest* r) { r->set_input_ids(0, -3); }, "input_ids[0]"},
      {[](v1::InferRequest* r) { r->set_max_new_tokens(-1); }, "max_new_tokens"},
      {[](v1::InferRequest* r) { r->set_max_new_tokens(1 << 20); }, "max_new_tokens"},
      {[](v1::InferRequest* r) {
         for (int i = 0; i < 2040; ++i) r->add_input_ids(5);
         r->set_max_new_tokens(100);
       },
       "max context"},
      {[](v1::InferRequest* r) { r->set_min_new_tokens(100); }, "min_new_tokens"},
      {[](v1::InferRequest* r) { r->set_temperature(std::numeric_limits<float>::quiet_NaN()); }, "temperature"},
      {[](v1::InferRequest* r) { r->set_temperature(-1); }, "temperature"},
      {[](v1::InferRequest* r) { r->set_top_p(1.01f); }, "top_p"},
      {[](v1::InferRequest* r) { r->set_top_k(-2); }, "top_k"},
      {[](v1::InferRequest* r) { r->add_stop_token_ids(5000); }, "stop_token_ids[0]"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 8);
    cases[i].mutate(&request);
    v1::InferResponse response;
    grpc::Status status = Unary(request, &response, 10s);
    EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT) << "case " << i;
    EXPECT_NE(status.error_message().find(cases[i].field), std::string::npos)
        << "case " << i << ": " << status.error_message();
  }
  v1::InferResponse response;
  EXPECT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 4), &response).ok()) << "still serving";
}

// One sequence at a time and slow steps: a request that still held its slot would delay the next.
// Also with overlapped steps, where the slot's sequence is in a launched step when it goes.
TEST_F(ServeIntegrationTest, DeadlineAndCancelFreeCapacity) {
  for (const char* overlap : {"false", "true"}) {
    SCOPED_TRACE(std::string("--overlap-steps ") + overlap);
    Start({"--max-batch", "1", "--debug-step-latency-ms", "10", "--overlap-steps", overlap});
    if (HasFatalFailure()) return;
    CheckDeadlineAndCancelFreeCapacity();
  }
}

void ServeIntegrationTest::CheckDeadlineAndCancelFreeCapacity() {
  v1::InferResponse response;
  v1::InferRequest long_request = MakeProtoRequest({1, 2, 3}, 1500);
  long_request.set_min_new_tokens(1500);  // no early stop on an eos id
  EXPECT_EQ(Unary(long_request, &response, 300ms).error_code(), grpc::DEADLINE_EXCEEDED);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 4), &response, 10s).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "deadline did not free the slot";

  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, 60s);
    auto reader = stub_->InferStream(&ctx, long_request);
    v1::InferResponse message;
    ASSERT_TRUE(reader->Read(&message));
    ctx.TryCancel();
    while (reader->Read(&message)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::CANCELLED);
  }
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(Unary(MakeProtoRequest({1, 2, 3}, 4), &response, 10s).ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "cancel did not free the slot";
}

TEST_F(ServeIntegrationTest, SixtyFourConcurrentClients) {
  for (const char* overlap : {"false", "true"}) {
    SCOPED_TRACE(std::string("--overlap-steps ") + overlap);
    Start({"--overlap-steps", overlap});
    if (HasFatalFailure()) return;
    CheckSixtyFourConcurrentClients();
  }
}

void ServeIntegrationTest::CheckSixtyFourConcurrentClients() {
  constexpr int kPrompts = 8, kClients = 64;
  std::vector<std::vector<int32_t>> prompts, expected;
  for (int p = 0; p < kPrompts; ++p) {
    prompts.push_back({p * 37 + 1, p * 11 + 5, 9});
    expected.push_back(Generate(prompts.back(), 10));
    ASSERT_FALSE(expected.back().empty());
  }
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<grpc::Status> statuses(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
      auto stub = v1::Inference::NewStub(channel);
      if (i % 2 == 0) {
        grpc::ClientContext ctx;
        SetDeadline(&ctx, 120s);
        v1::InferResponse r;
        statuses[i] = stub->Infer(&ctx, MakeProtoRequest(prompts[i % kPrompts], 10), &r);
        got[i] = Ids(r);
      } else {
        auto s = RunStream(stub.get(), MakeProtoRequest(prompts[i % kPrompts], 10), 120s);
        statuses[i] = s.status;
        got[i] = s.ids;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(got[i], expected[i % kPrompts]) << "client " << i;
  }
}

// SIGTERM (Kubernetes, systemd), SIGINT (Ctrl-C) and SIGHUP (the terminal or SSH session that
// started the server closing) all drain: in-flight requests finish, new ones are refused.
class ServeSignalTest : public ServeIntegrationTest, public ::testing::WithParamInterface<int> {};

TEST_P(ServeSignalTest, SignalDrainsInFlightRequests) {
  Start({"--debug-step-latency-ms", "10"});
  constexpr int kInFlight = 6;
  std::vector<grpc::Status> statuses(kInFlight);
  std::vector<size_t> counts(kInFlight);
  std::vector<std::thread> threads;
  for (int i = 0; i < kInFlight; ++i) {
    threads.emplace_back([&, i] {
      v1::InferRequest request = MakeProtoRequest({1, 2, 3 + i}, 100);
      request.set_min_new_tokens(100);
      auto s = RunStream(stub_.get(), request, 60s);
      statuses[i] = s.status;
      counts[i] = s.ids.size();
    });
  }
  std::this_thread::sleep_for(300ms);  // all six are generating (100 steps x 10 ms)
  // Every signal comes twice: a closing terminal hangs up twice (the shell, then the kernel), and
  // Ctrl-C or systemd's control-group kill reach a supervised child directly and through the
  // supervisor's forward (GNU timeout too signals its command twice). A copy is no second request.
  server_->Signal(GetParam());
  std::this_thread::sleep_for(5ms);
  server_->Signal(GetParam());
  int health = -2;
  for (int i = 0; i < 100 && health != 2; ++i) {
    health = HealthCheck(channel_, "");
    if (health != 2) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(health, 2) << "NOT_SERVING while draining";
  v1::InferResponse response;
  EXPECT_EQ(Unary(MakeProtoRequest({1}, 2), &response, 5s).error_code(), grpc::UNAVAILABLE);
  for (auto& t : threads) t.join();
  for (int i = 0; i < kInFlight; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i].error_message();
    EXPECT_EQ(counts[i], 100u) << i;
  }
  EXPECT_EQ(server_->WaitExit(30s), 0) << server_->log();
  EXPECT_NE(server_->log().find(absl::StrCat("signal ", GetParam(), ": draining")), std::string::npos)
      << server_->log();
}

// A second signal exits at once (1) wherever the drain is, including while an idle server is
// already returning from it: the signal thread once logged there through a logger being torn down
// and died of SIGSEGV (139) with a ~100 ms gap between the two signals.
TEST_F(ServeIntegrationTest, SecondSignalAnywhereInAnIdleDrainExitsWithoutACrash) {
  for (int gap_ms = 0; gap_ms <= 200; gap_ms += 20) {
    Start();
    server_->Signal(SIGTERM);
    std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
    server_->Signal(SIGTERM);
    const int code = server_->WaitExit(30s);
    EXPECT_TRUE(code == 0 || code == 1) << "gap " << gap_ms << " ms: exit " << code << "\n" << server_->log();
  }
}

// A second SIGTERM a second or more after the first is an operator asking to exit at once: the
// in-flight stream is cut and the exit code is 1.
TEST_F(ServeIntegrationTest, SecondSignalAfterTheRepeatWindowExitsAtOnce) {
  Start({"--debug-step-latency-ms", "10"});
  v1::InferRequest request = MakeProtoRequest({1, 2, 3}, 2000);
  request.set_min_new_tokens(2000);
  std::thread client([&] { RunStream(stub_.get(), request, 60s); });
  std::this_thread::sleep_for(300ms);
  server_->Signal(SIGTERM);
  std::this_thread::sleep_for(1200ms);
  const auto second = std::chrono::steady_clock::now();
  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->WaitExit(30s), 1) << server_->log();
  EXPECT_LT(std::chrono::steady_clock::now() - second, 10s) << "the drain ran on (2000 steps x 10 ms)";
  client.join();
  EXPECT_NE(server_->log().find("second signal, exiting now"), std::string::npos) << server_->log();
}

// Started under nohup (SIGHUP ignored), a hang-up changes nothing: the server keeps serving.
TEST_F(ServeIntegrationTest, HangUpIgnoredUnderNohup) {
  struct sigaction ignore {
  }, previous{};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(sigaction(SIGHUP, &ignore, &previous), 0);
  Start();  // the server inherits the ignored disposition through fork and exec
  ASSERT_EQ(sigaction(SIGHUP, &previous, nullptr), 0);
  server_->Signal(SIGHUP);
  std::this_thread::sleep_for(200ms);
  v1::InferResponse response;
  const grpc::Status status = Unary(MakeProtoRequest({1, 2, 3}, 4), &response);
  EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << server_->log();
  EXPECT_EQ(server_->log().find("signal 1"), std::string::npos) << server_->log();
  server_->Signal(SIGTERM);
  EXPECT_EQ(server_->WaitExit(30s), 0) << server_->log();
}

INSTANTIATE_TEST_SUITE_P(Signals, ServeSignalTest, ::testing::Values(SIGTERM, SIGINT, SIGHUP),
                         [](const ::testing::TestParamInfo<int>& info) -> std::string {
                           switch (info.param) {
                             case SIGTERM:
                               return "Sigterm";
                             case SIGINT:
                               return "Sigint";
                             default:
                               return "Sighup";
                           }
                         });

}  // namespace
}  // namespace glmserve

namespace glmserve {
namespace {

// Text in, text out with the bundled tokenizer: the prompt tokenizes as `glmserve tokenize` says,
// generates what `glmserve generate` does for those ids, and the text matches the CLI's.
TEST_F(ServeIntegrationTest, PromptAndChatText) {
  Start();
  const std::string model = std::string(" --model ") + kModel;
  nlohmann::json tok = RunJson("tokenize" + model + " --text 'hello world, 你好'");
  ASSERT_FALSE(tok.is_discarded());
  const std::vector<int32_t> prompt_ids = tok["ids"].get<std::vector<int32_t>>();
  nlohmann::json gen = RunJson("generate" + model + " --prompt 'hello world, 你好' --max-new-tokens 12");
  ASSERT_FALSE(gen.is_discarded());
  EXPECT_EQ(gen["input_ids"].get<std::vector<int32_t>>(), prompt_ids);
  EXPECT_EQ(gen["output_ids"].get<std::vector<int32_t>>(), Generate(prompt_ids, 12));

  v1::InferRequest request;
  request.set_prompt("hello world, 你好");
  request.set_max_new_tokens(12);
  v1::InferResponse unary;
  grpc::Status status = Unary(request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(unary.usage().prompt_tokens(), static_cast<int>(prompt_ids.size()));
  EXPECT_EQ(Ids(unary), gen["output_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(unary.text(), gen["text"].get<std::string>());
  auto stream = RunStream(stub_.get(), request, 30s);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  std::string text;
  for (const auto& m : stream.messages) text += m.text();
  EXPECT_EQ(text, unary.text());

  // Chat: system + user through the chat template, same as `generate --chat --system`.
  request.clear_prompt();
  auto* sys = request.add_messages();
  sys->set_role("system");
  sys->set_content("Be brief.");
  auto* user = request.add_messages();
  user->set_role("user");
  user->set_content("hello");
  status = Unary(request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  nlohmann::json chat = RunJson("generate" + model + " --system 'Be brief.' --chat hello --max-new-tokens 12");
  ASSERT_FALSE(chat.is_discarded());
  EXPECT_EQ(unary.usage().prompt_tokens(), static_cast<int>(chat["input_ids"].size()));
  EXPECT_EQ(Ids(unary), chat["output_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(unary.text(), chat["text"].get<std::string>());

  // An empty system message is a turn of its own, for the CLI as for the server (the CLI dropped it).
  sys->set_content("");
  status = Unary(request, &unary);
  ASSERT_TRUE(status.ok()) << status.error_message();
  nlohmann::json empty_system = RunJson("generate" + model + " --system '' --chat hello --max-new-tokens 12");
  ASSERT_FALSE(empty_system.is_discarded());
  EXPECT_EQ(unary.usage().prompt_tokens(), static_cast<int>(empty_system["input_ids"].size()));
  EXPECT_GT(empty_system["input_ids"].size(),
            RunJson("generate" + model + " --chat hello --max-new-tokens 1")["input_ids"].size());
}

}  // namespace
}  // namespace glmserve
