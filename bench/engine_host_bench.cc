// What the engine costs the host per step, with a model that costs nothing: the real engine
// (CreateInferenceEngine: its thread, Scheduler, callbacks) around an executor that answers
// every step at once, under C closed-loop clients (a finished request's client sends the next).
// In `glmserve serve` this work sits between two GPU steps (commit, reaping, planning), so the
// microseconds a step here are GPU idle there. Prints one markdown row per level.
//   engine_host_bench [--concurrency 64,128,256] [--prompt-tokens 128] [--new-tokens 128]
//                     [--seconds 2]
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flags/flags.h"
#include "runtime/engine.h"
#include "runtime/engine/engine_impl.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kEosId = 2;

// Answers every step at once: a sampled id that is never the eos id, so requests end by length.
class InstantExecutor : public glmserve::StepExecutor {
 public:
  int32_t block_size() const override { return 16; }
  int32_t num_blocks() const override { return 1 << 20; }
  absl::StatusOr<glmserve::StepResult> Step(const std::vector<glmserve::SequenceStep>& batch) override {
    glmserve::StepResult result;
    result.next_tokens.reserve(batch.size());
    for (const glmserve::SequenceStep& s : batch) {
      result.next_tokens.push_back(s.sample ? 1000 + static_cast<int32_t>(s.sequence_id % 7) : -1);
    }
    return result;
  }
};

// C clients, each with one request in flight: on_done hands the client back to a sender thread
// (callbacks must not block the engine thread), which submits its next request.
class ClosedLoop {
 public:
  ClosedLoop(glmserve::InferenceEngine* engine, int32_t prompt_tokens, int32_t new_tokens)
      : engine_(engine), prompt_tokens_(prompt_tokens), new_tokens_(new_tokens) {}

  void Run(int32_t clients, Clock::duration length) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int32_t c = 0; c < clients; ++c) ready_.push_back(c);
    }
    const Clock::time_point end = Clock::now() + length;
    std::unique_lock<std::mutex> lock(mu_);
    while (Clock::now() < end) {
      if (!cv_.wait_until(lock, end, [&] { return !ready_.empty(); })) break;
      const int32_t client = ready_.front();
      ready_.pop_front();
      lock.unlock();
      Send(client);
      lock.lock();
    }
    lock.unlock();
    engine_->WaitIdle(std::chrono::seconds(30));
  }

  int64_t tokens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return tokens_;
  }

 private:
  void Send(int32_t client) {
    glmserve::InferenceRequest request;
    request.request_id = absl::StrCat("c", client, "-", next_id_++);
    request.input_ids.assign(prompt_tokens_, 0);
    for (int32_t i = 0; i < prompt_tokens_; ++i) request.input_ids[i] = 100 + (client * 31 + i) % 5000;
    request.params.max_new_tokens = new_tokens_;
    glmserve::RequestCallbacks callbacks;
    // As a streaming front end does: the new ids into the client's queue, under its lock.
    callbacks.on_tokens = [this](const std::vector<int32_t>& ids) {
      std::lock_guard<std::mutex> lock(mu_);
      tokens_ += static_cast<int64_t>(ids.size());
    };
    callbacks.on_done = [this, client](const glmserve::RequestResult&) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ready_.push_back(client);
      }
      cv_.notify_one();
    };
    if (!engine_->Submit(std::move(request), std::move(callbacks)).ok()) {
      std::fprintf(stderr, "engine_host_bench: Submit refused a request\n");
    }
  }

  glmserve::InferenceEngine* engine_;
  const int32_t prompt_tokens_, new_tokens_;
  int64_t next_id_ = 0;  // sender thread only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int32_t> ready_;
  int64_t tokens_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int32_t> concurrency = {64, 128, 256};
  int32_t prompt_tokens = 128, new_tokens = 128;
  double seconds = 2;
  glmserve::EngineOptions options;
  // Scheduling as `glmserve serve --device cuda` runs it (scripts/gpu-serve-bench.sh: --max-batch 256).
  options.scheduler.max_batch_size = 256;
  options.scheduler.max_tokens_per_step = 8192;
  options.scheduler.max_prefill_tokens_with_decodes = 256;
  options.scheduler.mixed_step_rows = 256;
  options.max_queued_requests = 4096;
  glmserve::flags::FlagSet flags("engine_host_bench", "[flags]",
                                 "The engine's host time per step around an executor that costs nothing.");
  flags.IntList("concurrency", &concurrency, 1, 4096, "closed-loop clients, one level each");
  flags.Int("prompt-tokens", &prompt_tokens, 1, 1 << 16, "prompt tokens of every request");
  flags.Int("new-tokens", &new_tokens, 1, 1 << 16, "tokens every request generates");
  flags.Duration("seconds", &seconds, 0.01, 3600, "sending per level");
  if (auto exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;

  std::printf(
      "| clients | steps | steps/s | host us a step | us a generated token | tokens/s |\n"
      "|---:|---:|---:|---:|---:|---:|\n");
  for (int32_t clients : concurrency) {
    glmserve::ModelInfo info;
    info.architecture = "glm4";
    info.vocab_size = 151552;
    info.max_position_embeddings = 1 << 16;
    info.eos_token_ids = {kEosId};
    auto engine = glmserve::CreateInferenceEngine(options, std::make_unique<InstantExecutor>(), info);
    if (!engine.ok()) {
      std::fprintf(stderr, "engine_host_bench: %s\n", std::string(engine.status().message()).c_str());
      return 1;
    }
    ClosedLoop loop(engine->get(), prompt_tokens, new_tokens);
    const Clock::time_point start = Clock::now();
    loop.Run(clients, std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const int64_t steps = (*engine)->stats().steps;
    const int64_t tokens = loop.tokens();
    (*engine)->Shutdown();
    std::printf("| %d | %lld | %.0f | %.1f | %.2f | %.0f |\n", clients, static_cast<long long>(steps), steps / elapsed,
                1e6 * elapsed / steps, 1e6 * elapsed / tokens, tokens / elapsed);
    std::fflush(stdout);
  }
  return 0;
}
