// glmload's closed and open loops against an in-process stub glmserve.v1.Inference that answers at
// once (or after an injected delay): rate accuracy, request counts, streaming timings, deadlines.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "bench/glmload.h"
#include "glmserve/v1/inference.grpc.pb.h"

namespace glmserve::load {
namespace {

using namespace std::chrono_literals;

class StubService final : public v1::Inference::Service {
 public:
  std::atomic<int> calls{0}, in_flight{0}, max_in_flight{0};
  std::atomic<int> delay_ms{0};       // before answering
  std::atomic<int> step_delay_ms{0};  // between stream messages
  std::atomic<bool> refuse{false};    // every call refused RESOURCE_EXHAUSTED at once
  std::mutex mu;
  std::set<int> prompt_sizes, max_new_seen;
  std::vector<std::vector<int32_t>> prompts;  // every Infer call's input ids
  bool min_equals_max = true;

  grpc::Status Infer(grpc::ServerContext* ctx, const v1::InferRequest* req, v1::InferResponse* resp) override {
    if (refuse.load()) {
      calls.fetch_add(1);
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full");
    }
    Enter();
    {
      std::lock_guard<std::mutex> lock(mu);
      prompt_sizes.insert(req->input_ids_size());
      prompts.emplace_back(req->input_ids().begin(), req->input_ids().end());
      max_new_seen.insert(req->max_new_tokens());
      min_equals_max &= req->min_new_tokens() == req->max_new_tokens();
    }
    Sleep(ctx, delay_ms.load());
    for (int i = 0; i < req->max_new_tokens(); ++i) resp->add_output_ids(i);
    Final(*req, resp);
    Leave();
    return ctx->IsCancelled() ? grpc::Status(grpc::StatusCode::CANCELLED, "cancelled") : grpc::Status::OK;
  }
  grpc::Status InferStream(grpc::ServerContext* ctx, const v1::InferRequest* req,
                           grpc::ServerWriter<v1::InferResponse>* writer) override {
    Enter();
    Sleep(ctx, delay_ms.load());
    for (int i = 0; i < req->max_new_tokens(); ++i) {
      if (i > 0) Sleep(ctx, step_delay_ms.load());
      v1::InferResponse msg;
      msg.add_output_ids(i);
      if (i + 1 == req->max_new_tokens()) Final(*req, &msg);
      writer->Write(msg);
    }
    Leave();
    return grpc::Status::OK;
  }
  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*, v1::ModelInfo* info) override {
    info->set_architecture("stub");
    info->set_device("cpu");
    info->set_vocab_size(100);
    info->set_max_batch(4);
    return grpc::Status::OK;
  }

 private:
  void Enter() {
    calls.fetch_add(1);
    const int now = in_flight.fetch_add(1) + 1;
    int prev = max_in_flight.load();
    while (now > prev && !max_in_flight.compare_exchange_weak(prev, now)) {
    }
  }
  void Leave() { in_flight.fetch_sub(1); }
  static void Sleep(grpc::ServerContext* ctx, int ms) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < end && !ctx->IsCancelled()) std::this_thread::sleep_for(1ms);
  }
  static void Final(const v1::InferRequest& req, v1::InferResponse* resp) {
    resp->set_finish_reason(v1::LENGTH);
    resp->mutable_usage()->set_prompt_tokens(req.input_ids_size());
    resp->mutable_usage()->set_completion_tokens(req.max_new_tokens());
    resp->set_queue_ms(3.0);
    resp->set_ttft_ms(4.0);
  }
};

class GlmloadStubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_GT(port_, 0);
    opts_.target = "127.0.0.1:" + std::to_string(port_);
    opts_.progress = false;
    opts_.prompt_len = {4, 4};
    opts_.max_new_tokens = {3, 3};
    opts_.deadline_ms = 5000;
  }
  void TearDown() override { server_->Shutdown(std::chrono::system_clock::now() + 1s); }

  StubService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  Options opts_;
};

TEST_F(GlmloadStubTest, OpenLoopRateIsAccurate) {
  opts_.rate = 200;
  opts_.duration_s = 2;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunLoad(opts_);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->levels.size(), 1u);
  const LevelResult& l = r->levels[0];
  EXPECT_EQ(l.mode, "open");
  // 400 expected; a Poisson count has sd 20, so +-15% (60) is 3 sd.
  EXPECT_GE(l.sent, 340);
  EXPECT_LE(l.sent, 460);
  EXPECT_EQ(l.ok, l.sent);
  EXPECT_TRUE(l.errors.empty());
  EXPECT_EQ(l.dropped, 0);
  EXPECT_EQ(service_.calls.load(), l.sent);
  EXPECT_NEAR(l.requests_per_s, 200, 30);
  EXPECT_EQ(l.generated_tokens, 3 * l.ok);
  EXPECT_LT(wall, 4.0);  // stops by itself
}

TEST_F(GlmloadStubTest, OpenLoopIsSeeded) {
  opts_.rate = 300;
  opts_.duration_s = 0.5;
  opts_.seed = 5;
  auto a = RunLoad(opts_);
  auto b = RunLoad(opts_);
  ASSERT_TRUE(a.ok() && b.ok());
  // Same seed, same arrival schedule: the same number of arrivals fall inside the window.
  EXPECT_EQ(a->levels[0].sent, b->levels[0].sent);
}

TEST_F(GlmloadStubTest, ClosedLoopSendsExactlyRequestsAtConcurrency) {
  service_.delay_ms = 5;
  opts_.concurrency = 4;
  opts_.requests = 60;
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  const LevelResult& l = r->levels[0];
  EXPECT_EQ(l.mode, "closed");
  EXPECT_EQ(l.sent, 60);
  EXPECT_EQ(l.ok, 60);
  EXPECT_EQ(service_.calls.load(), 60);
  EXPECT_LE(service_.max_in_flight.load(), 4);
  EXPECT_GE(service_.max_in_flight.load(), 2);
  EXPECT_EQ(l.latency_ms.count, 60u);
  EXPECT_GE(l.latency_ms.p50, 5.0);
  EXPECT_DOUBLE_EQ(l.queue_ms.p50, 3.0);  // the server's queue_ms, passed through
  EXPECT_EQ(l.ttft_ms.count, 0u);         // unary: no client-side TTFT
  EXPECT_EQ(r->server.vocab_size, 100);
  EXPECT_EQ(r->server.max_batch, 4);
}

TEST_F(GlmloadStubTest, StreamMeasuresTtftAndInterToken) {
  service_.delay_ms = 20;
  service_.step_delay_ms = 10;
  opts_.stream = true;
  opts_.concurrency = 2;
  opts_.requests = 10;
  opts_.max_new_tokens = {5, 5};
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  const LevelResult& l = r->levels[0];
  EXPECT_EQ(l.ok, 10);
  EXPECT_EQ(l.generated_tokens, 50);
  EXPECT_EQ(l.ttft_ms.count, 10u);
  EXPECT_EQ(l.inter_token_ms.count, 40u);  // 4 gaps per 5-token stream
  EXPECT_GE(l.ttft_ms.p50, 18.0);
  EXPECT_GE(l.inter_token_ms.p50, 8.0);
  EXPECT_LT(l.inter_token_ms.p50, 60.0);
  EXPECT_GE(l.latency_ms.p50, l.ttft_ms.p50 + 35.0);
  EXPECT_DOUBLE_EQ(l.queue_ms.p50, 3.0);
}

// The steady-state window is [start + warmup, end of sending): ids that arrive after sending
// stopped (the drain: after --duration, or after the last send where --requests ran out) or during
// the warm-up are left out; the level's tok/s keeps them.
TEST_F(GlmloadStubTest, SteadyWindowLeavesOutWarmupAndDrain) {
  auto run_level = [&](double duration_s, double warmup_s, int64_t requests) {
    opts_.duration_s = duration_s;
    opts_.warmup_s = warmup_s;
    opts_.requests = requests;
    absl::StatusOr<Report> r = RunLoad(opts_);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() && r->levels.size() == 1 ? r->levels[0] : LevelResult();
  };
  for (const bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "stream" : "unary");
    opts_.stream = stream;
    opts_.concurrency = 2;
    // No id before 0.6 s, sending ends at 0.4 s: every id arrives in the drain.
    service_.delay_ms = 600;
    const LevelResult d = run_level(0.4, 0.1, 0);
    EXPECT_EQ(d.ok, 2);
    EXPECT_EQ(d.generated_tokens, 6);
    EXPECT_GT(d.generated_tokens_per_s, 0);
    EXPECT_EQ(d.steady_generated_tokens, 0);
    EXPECT_NEAR(d.steady_window_s, 0.3, 1e-6);
    EXPECT_EQ(d.steady_generated_tokens_per_s, 0);

    // Answered at once: ids arrive all through the level, the warm-up's are left out.
    service_.delay_ms = 0;
    const LevelResult b = run_level(0.5, 0.2, 0);
    EXPECT_GT(b.steady_generated_tokens, 0);
    EXPECT_LT(b.steady_generated_tokens, b.generated_tokens);
    EXPECT_NEAR(b.steady_window_s, 0.3, 1e-6);
    EXPECT_DOUBLE_EQ(b.steady_generated_tokens_per_s, b.steady_generated_tokens / b.steady_window_s);
    // A unary reply's ids arrive together: each counts whole or not at all.
    if (!stream) {
      EXPECT_EQ(b.steady_generated_tokens % 3, 0);
    }
    Report report;
    report.levels = {b};
    const std::string table = FormatTable(report);
    EXPECT_NE(table.find("steady tok/s"), std::string::npos) << table;

    // Ended by --requests: the window closes at the last send, so the last request's ids (which
    // arrive after it) are left out.
    const LevelResult c = run_level(0, 0, 40);
    EXPECT_EQ(c.generated_tokens, 120);
    EXPECT_GT(c.steady_generated_tokens, 0);
    EXPECT_LE(c.steady_generated_tokens, 117);
    EXPECT_GT(c.steady_window_s, 0);
    EXPECT_LT(c.steady_window_s, c.elapsed_s);
  }
}

TEST_F(GlmloadStubTest, DeadlinesCountAsErrorsByCode) {
  service_.delay_ms = 2000;
  opts_.concurrency = 2;
  opts_.requests = 4;
  opts_.deadline_ms = 100;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  const LevelResult& l = r->levels[0];
  EXPECT_EQ(l.ok, 0);
  ASSERT_EQ(l.errors.count("DEADLINE_EXCEEDED"), 1u);
  EXPECT_EQ(l.errors.at("DEADLINE_EXCEEDED"), 4);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_NE(FormatTable(*r).find("DEADLINE_EXCEEDED=4"), std::string::npos) << FormatTable(*r);
}

// A refusal comes back at once: without a backoff each stream resent in a busy loop (8-12k
// requests a second against glmserve), slowing the server for the requests it did serve.
TEST_F(GlmloadStubTest, ClosedLoopStreamsWaitAfterAFailure) {
  service_.refuse = true;
  opts_.concurrency = 2;
  opts_.duration_s = 1.0;
  opts_.error_backoff_ms = 100;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  const LevelResult& l = r->levels[0];
  ASSERT_EQ(l.errors.count("RESOURCE_EXHAUSTED"), 1u);
  const int64_t refused = l.errors.at("RESOURCE_EXHAUSTED");
  EXPECT_EQ(refused, service_.calls.load()) << "every call counted once";
  EXPECT_EQ(l.sent, refused);
  // ~10 sends a stream in 1 s at one per 100 ms (scheduling may stretch a wait, never shorten it).
  EXPECT_LE(refused, 2 * 11);
  EXPECT_GE(refused, 2 * 3);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s) << "the level ends though streams were waiting";
}

TEST_F(GlmloadStubTest, SweepRunsEachLevel) {
  opts_.sweep = {1, 2, 4};
  opts_.requests = 12;
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->levels.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(r->levels[i].concurrency, opts_.sweep[i]);
    EXPECT_EQ(r->levels[i].ok, 12);
  }
  const std::string table = FormatTable(*r);
  EXPECT_NE(table.find("lat p50"), std::string::npos) << table;
}

TEST_F(GlmloadStubTest, PromptFileAndLengthDistributions) {
  const std::string path =
      (std::filesystem::temp_directory_path() / ("glmload_prompts." + std::to_string(getpid()))).string();
  std::ofstream(path) << "1,2,3\n\n4 5\n";
  opts_.prompt_file = path;
  opts_.max_new_tokens = {2, 4};
  opts_.concurrency = 3;
  opts_.requests = 60;
  auto r = RunLoad(opts_);
  std::filesystem::remove(path);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->levels[0].ok, 60);
  EXPECT_EQ(service_.prompt_sizes, (std::set<int>{2, 3}));     // both prompts drawn, blank line skipped
  EXPECT_EQ(service_.max_new_seen, (std::set<int>{2, 3, 4}));  // uniform:2:4
  EXPECT_TRUE(service_.min_equals_max);                        // --ignore-eos (default)
  EXPECT_GE(r->levels[0].generated_tokens, 120);
  EXPECT_LE(r->levels[0].generated_tokens, 240);

  opts_.prompt_file = "/nonexistent/prompts.txt";
  EXPECT_FALSE(RunLoad(opts_).ok());
}

// --shared-prefix-len: every prompt starts with the same tokens (the same in each level of a
// sweep), the rest still vary; with --prompt-file it is refused naming both flags.
TEST_F(GlmloadStubTest, SharedPrefixStartsEveryPrompt) {
  opts_.prompt_len = {6, 6};
  opts_.shared_prefix_len = 4;
  opts_.vocab_size = 1000;
  opts_.sweep = {1, 2};
  opts_.requests = 10;
  auto r = RunLoad(opts_);
  ASSERT_TRUE(r.ok()) << r.status();
  std::lock_guard<std::mutex> lock(service_.mu);
  ASSERT_EQ(service_.prompts.size(), 20u);
  std::set<std::vector<int32_t>> prefixes, tails;
  for (const auto& p : service_.prompts) {
    ASSERT_EQ(p.size(), 6u);
    prefixes.emplace(p.begin(), p.begin() + 4);
    tails.emplace(p.begin() + 4, p.end());
  }
  EXPECT_EQ(prefixes.size(), 1u);
  EXPECT_GT(tails.size(), 10u);

  const std::vector<std::string> args = {"glmload", "--shared-prefix-len", "8", "--prompt-file", "/tmp/p.txt"};
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  const absl::StatusOr<Options> parsed = ParseFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("--shared-prefix-len"), std::string::npos) << parsed.status();
  EXPECT_NE(parsed.status().message().find("--prompt-file"), std::string::npos) << parsed.status();
}

TEST(GlmloadNoServerTest, UnreachableTargetFailsFast) {
  Options o;
  o.target = "127.0.0.1:1";
  o.progress = false;
  o.requests = 1;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunLoad(o);
  EXPECT_FALSE(r.ok());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);
}

}  // namespace
}  // namespace glmserve::load
