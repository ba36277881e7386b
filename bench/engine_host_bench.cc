// What the engine costs the host per step, with a model that costs nothing: the real engine
// (CreateInferenceEngine: its thread, Scheduler, callbacks) around an executor that answers
// every step at once, under C closed-loop clients (bench/closed_loop.h).
// In `glmserve serve` this work sits between two GPU steps (commit, reaping, planning), so the
// microseconds a step here are GPU idle there. Prints one markdown row per level.
//   engine_host_bench [--concurrency 64,128,256] [--prompt-tokens 128] [--new-tokens 128]
//                     [--seconds 2]
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/closed_loop.h"
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
  options.scheduler.prefix_caching = true;  // serve's default on every device
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
    glmserve::bench::ClosedLoopOptions loop;
    loop.clients = clients;
    const Clock::time_point start = Clock::now();
    loop.stop_sending = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    // As a streaming front end does with each step's ids: into the client's queue, under a lock.
    std::mutex stream_mu;
    int64_t tokens = 0;
    absl::StatusOr<std::vector<glmserve::RequestResult>> done = glmserve::bench::RunClosedLoop(
        engine->get(), loop,
        [&](int64_t id) {
          glmserve::InferenceRequest request;
          request.request_id = absl::StrCat("r", id);
          for (int32_t i = 0; i < prompt_tokens; ++i) {
            request.input_ids.push_back(static_cast<int32_t>(100 + (id * 31 + i) % 5000));
          }
          request.params.max_new_tokens = new_tokens;
          return request;
        },
        [&](const std::vector<int32_t>& ids) {
          std::lock_guard<std::mutex> lock(stream_mu);
          tokens += static_cast<int64_t>(ids.size());
        });
    if (!done.ok()) {
      std::fprintf(stderr, "engine_host_bench: %s\n", done.status().ToString().c_str());
      return 1;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const int64_t steps = (*engine)->stats().steps;
    (*engine)->Shutdown();
    std::printf("| %d | %lld | %.0f | %.1f | %.2f | %.0f |\n", clients, static_cast<long long>(steps), steps / elapsed,
                1e6 * elapsed / steps, 1e6 * elapsed / tokens, tokens / elapsed);
    std::fflush(stdout);
  }
  return 0;
}
