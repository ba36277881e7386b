// What the engine costs the host per step, with a model that costs nothing: the real engine
// (CreateInferenceEngine: its thread, Scheduler, callbacks) around an executor that answers
// every step at once or after --step-us (a GPU step's time, slept), under C closed-loop clients
// (bench/closed_loop.h). With --sessions the requests go through the server's RequestSessions
// (delivery workers, request logs) to a streaming sink, as `glmserve serve` sends them.
// In `glmserve serve` the engine thread's work between two steps (commit and the callbacks,
// reaping, planning) is GPU idle: "host us between steps" is that time, the device's idle time
// between steps (with --overlap-steps the engine plans and commits while a step runs, and only
// what does not overlap remains). Prints one markdown row per level.
//   engine_host_bench [--concurrency 64,128,256] [--prompt-tokens 128] [--new-tokens 128]
//                     [--seconds 2] [--step-us 0] [--sessions false] [--overlap-steps false]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/closed_loop.h"
#include "flags/flags.h"
#include "runtime/engine.h"
#include "runtime/engine/engine_impl.h"
#include "server/commands/scheduling_flags.h"
#if GLMSERVE_ENGINE_HOST_BENCH_SESSIONS
#include "server/ops/logging.h"
#include "server/request/request_session.h"
#endif

namespace {

using Clock = std::chrono::steady_clock;

constexpr int32_t kEosId = 2;

// Answers every step at once, or after `step` (slept, as the engine thread waits for a GPU): a
// sampled id that is never the eos id, so requests end by length. It keeps the timeline of a
// device that runs one step at a time for `step` each: under Step a step runs from the call to its
// return; under --overlap-steps a launched step starts when the call comes or when the device
// finishes the step before it, whichever is later, and Collect sleeps until it ends. The time
// between one step's end and the next one's start is the device's idle time (engine thread only).
class InstantExecutor : public glmserve::StepExecutor {
 public:
  explicit InstantExecutor(std::chrono::microseconds step) : step_(step) {}
  int32_t block_size() const override { return 16; }
  int32_t num_blocks() const override { return 1 << 20; }
  absl::StatusOr<glmserve::StepResult> Step(const std::vector<glmserve::SequenceStep>& batch) override {
    Start(Clock::now());
    glmserve::StepResult result = Answer(batch);
    if (step_.count() > 0) std::this_thread::sleep_for(step_);
    device_free_ = Clock::now();
    return result;
  }
  absl::Status Launch(const std::vector<glmserve::SequenceStep>& batch) override {
    const Clock::time_point started = Start(std::max(Clock::now(), device_free_));
    device_free_ = started + step_;
    launched_.push_back({Answer(batch), device_free_});
    return absl::OkStatus();
  }
  absl::StatusOr<glmserve::StepResult> Collect() override {
    if (launched_.empty()) return absl::FailedPreconditionError("Collect with no launched step");
    Launched step = std::move(launched_.front());
    launched_.pop_front();
    const Clock::time_point waited = Clock::now();
    std::this_thread::sleep_until(step.ends);
    step.result.device_wait_us = std::chrono::duration<double, std::micro>(Clock::now() - waited).count();
    return std::move(step.result);
  }
  // Mean microseconds the device idled between two steps; read after the engine stopped.
  double MeanUsBetweenSteps() const {
    return gaps_ == 0 ? 0 : std::chrono::duration<double, std::micro>(idle_).count() / gaps_;
  }

 private:
  struct Launched {
    glmserve::StepResult result;
    Clock::time_point ends;
  };

  // A step starting on the device at `at`: the idle time since the last one ended.
  Clock::time_point Start(Clock::time_point at) {
    if (device_free_ != Clock::time_point()) {
      idle_ += at - std::min(at, device_free_);
      ++gaps_;
    }
    return at;
  }
  static glmserve::StepResult Answer(const std::vector<glmserve::SequenceStep>& batch) {
    glmserve::StepResult result;
    result.next_tokens.reserve(batch.size());
    for (const glmserve::SequenceStep& s : batch) {
      result.next_tokens.push_back(s.sample ? 1000 + static_cast<int32_t>(s.sequence_id % 7) : -1);
    }
    return result;
  }

  const std::chrono::microseconds step_;
  Clock::time_point device_free_;  // when the device finishes the last step given to it
  std::deque<Launched> launched_;
  Clock::duration idle_{};
  int64_t gaps_ = 0;
};

#if GLMSERVE_ENGINE_HOST_BENCH_SESSIONS
// A streaming front end's sink: each step's ids queued under the call's lock (as the gRPC stream
// queues its writes, here dropped after the last few: nothing writes them out); the result to the
// closed loop.
class StreamingSink : public glmserve::SessionSink {
 public:
  StreamingSink(std::function<void(const glmserve::RequestResult&)> on_done, int64_t* tokens, std::mutex* tokens_mu)
      : on_done_(std::move(on_done)), tokens_(tokens), tokens_mu_(tokens_mu) {}
  void OnStep(const std::vector<int32_t>& ids, const std::string& text) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pending_.push_back(ids);
      pending_text_.push_back(text);
      if (pending_.size() > 4) {
        pending_.pop_front();
        pending_text_.pop_front();
      }
    }
    std::lock_guard<std::mutex> lock(*tokens_mu_);
    *tokens_ += static_cast<int64_t>(ids.size());
  }
  void OnFinish(const glmserve::RequestResult& result, const std::string&, const std::string&) override {
    on_done_(result);
  }

 private:
  std::function<void(const glmserve::RequestResult&)> on_done_;
  int64_t* tokens_;
  std::mutex* tokens_mu_;
  std::mutex mu_;
  std::deque<std::vector<int32_t>> pending_;
  std::deque<std::string> pending_text_;
};
#endif

}  // namespace

int main(int argc, char** argv) {
  std::vector<int32_t> concurrency = {64, 128, 256};
  int32_t prompt_tokens = 128, new_tokens = 128;
  double seconds = 2;
  int64_t step_us = 0;
  bool through_sessions = false;
  glmserve::EngineOptions options;
  // Scheduling as `glmserve serve --device cuda` runs it, at scripts/gpu-serve-bench.sh's --max-batch 256.
  options.scheduler.max_batch_size = 256;
  options.scheduler.prefix_caching = true;  // serve's default on every device
  options.max_queued_requests = 4096;
  glmserve::SchedulingFlags scheduling(&options.scheduler);
  glmserve::flags::FlagSet flags("engine_host_bench", "[flags]",
                                 "The engine's host time per step around an executor that costs nothing.");
  flags.IntList("concurrency", &concurrency, 1, 4096, "closed-loop clients, one level each");
  flags.Int("prompt-tokens", &prompt_tokens, 1, 1 << 16, "prompt tokens of every request");
  flags.Int("new-tokens", &new_tokens, 1, 1 << 16, "tokens every request generates");
  flags.Duration("seconds", &seconds, 0.01, 3600, "sending per level");
  flags.Int("step-us", &step_us, 0, 10'000'000,
            "each step takes this long (slept), as a GPU step would; 0 = the engine runs flat out");
  flags.Bool("sessions", &through_sessions,
             "requests through the server's RequestSessions (two delivery workers, request logs to "
             "stderr) to a streaming sink, as glmserve serve sends them");
  flags.Section("scheduling (glmserve serve's flags and their GPU defaults)");
  scheduling.Register(flags);
  if (auto exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (absl::Status resolved = scheduling.Resolve(/*gpu=*/true); !resolved.ok()) {
    return flags.UsageError(resolved.message());
  }
#if !GLMSERVE_ENGINE_HOST_BENCH_SESSIONS
  if (through_sessions) return flags.UsageError("--sessions: built without the server (GLMSERVE_WITH_GRPC=OFF)");
#endif

  std::printf(
      "| clients | steps | steps/s | wall us a step | host us between steps | of which schedule / commit | us a "
      "generated token | tokens/s |\n"
      "|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int32_t clients : concurrency) {
    glmserve::ModelInfo info;
    info.architecture = "glm4";
    info.vocab_size = 151552;
    info.max_position_embeddings = 1 << 16;
    info.eos_token_ids = {kEosId};
    auto executor = std::make_unique<InstantExecutor>(std::chrono::microseconds(step_us));
    const InstantExecutor* timing = executor.get();
    auto engine = glmserve::CreateInferenceEngine(options, std::move(executor), info);
    if (!engine.ok()) {
      std::fprintf(stderr, "engine_host_bench: %s\n", std::string(engine.status().message()).c_str());
      return 1;
    }
    glmserve::bench::ClosedLoopOptions loop;
    loop.clients = clients;
    const Clock::time_point start = Clock::now();
    loop.stop_sending = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    auto make_request = [&](int64_t id) {
      glmserve::InferenceRequest request;
      request.request_id = absl::StrCat("r", id);
      for (int32_t i = 0; i < prompt_tokens; ++i) {
        request.input_ids.push_back(static_cast<int32_t>(100 + (id * 31 + i) % 5000));
      }
      request.params.max_new_tokens = new_tokens;
      return request;
    };
    // As a streaming front end does with each step's ids: into the client's queue, under a lock.
    std::mutex stream_mu;
    int64_t tokens = 0;
    absl::StatusOr<std::vector<glmserve::RequestResult>> done;
#if GLMSERVE_ENGINE_HOST_BENCH_SESSIONS
    std::unique_ptr<glmserve::RequestSessions> sessions;
    if (through_sessions) {
      sessions = std::make_unique<glmserve::RequestSessions>(glmserve::RequestSessionsOptions());
      sessions->SetEngine(engine->get());
      done = glmserve::bench::RunClosedLoopWith(
          loop, [&](int64_t id, std::function<void(const glmserve::RequestResult&)> on_done) -> absl::Status {
            glmserve::Admission admission;
            admission.engine = engine->get();
            admission.model = sessions->model();
            glmserve::SessionInfo session;
            session.request_id = absl::StrCat("r", id);
            session.rpc = "InferStream";
            session.streaming = true;
            std::shared_ptr<glmserve::RequestSession> started;
            std::optional<glmserve::Refusal> refused =
                sessions->Submit(admission, make_request(id), std::move(session), {},
                                 std::make_shared<StreamingSink>(std::move(on_done), &tokens, &stream_mu), &started);
            if (refused) return refused->ToStatus();
            return absl::OkStatus();
          });
    }
#endif
    if (!through_sessions) {
      done = glmserve::bench::RunClosedLoop(engine->get(), loop, make_request, [&](const std::vector<int32_t>& ids) {
        std::lock_guard<std::mutex> lock(stream_mu);
        tokens += static_cast<int64_t>(ids.size());
      });
    }
    if (!done.ok()) {
      std::fprintf(stderr, "engine_host_bench: %s\n", done.status().ToString().c_str());
      return 1;
    }
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const glmserve::EngineStats stats = (*engine)->stats();
    const int64_t steps = stats.steps;
    (*engine)->Shutdown();
#if GLMSERVE_ENGINE_HOST_BENCH_SESSIONS
    if (sessions != nullptr) sessions->Flush();
#endif
    // The scheduler's own split of that time (glmserve_step_phase_seconds_total's schedule and commit).
    std::printf("| %d | %lld | %.0f | %.1f | %.1f | %.1f / %.1f | %.2f | %.0f |\n", clients,
                static_cast<long long>(steps), steps / elapsed, 1e6 * elapsed / steps, timing->MeanUsBetweenSteps(),
                1e-3 * static_cast<double>(stats.schedule_ns) / steps,
                1e-3 * static_cast<double>(stats.commit_ns) / steps, 1e6 * elapsed / tokens, tokens / elapsed);
    std::fflush(stdout);
  }
  return 0;
}
