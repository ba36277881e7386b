// `glmserve serve`: load, warm up, serve over gRPC, drain on SIGTERM/SIGINT.
#include "server/serve_command.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "runtime/engine.h"
#include "runtime/model_runner.h"
#include "server/cli.h"
#include "server/grpc_service.h"
#include "server/serve_engine.h"
#include "server/serve_flags.h"

#ifndef GLMSERVE_VERSION
#define GLMSERVE_VERSION "unknown"
#endif

namespace glmserve {
namespace {

// Signals are blocked in every thread and taken by one waiter thread (sigwait), so nothing
// async-signal-unsafe happens in a handler.
class SignalWaiter {
 public:
  void Start(sigset_t set) {
    std::thread([this, set] {
      for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        std::unique_lock<std::mutex> lock(mu_);
        if (signals_ > 0 || !ready_) {
          LogLine(absl::StrCat("signal ", sig, ": ", ready_ ? "second signal, exiting now" : "exiting before ready"));
          std::_Exit(ready_ ? kExitFailure : kExitOk);
        }
        ++signals_;
        LogLine(absl::StrCat("signal ", sig, ": draining (send again to exit at once)"));
        cv_.notify_all();
      }
    }).detach();
  }
  void SetReady() {
    std::lock_guard<std::mutex> lock(mu_);
    ready_ = true;
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return signals_ > 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int signals_ = 0;
  bool ready_ = false;
};

absl::Status WarmUp(InferenceEngine* engine, std::chrono::milliseconds timeout) {
  InferenceRequest request;
  request.request_id = "warmup";
  request.input_ids = {0};
  request.params.max_new_tokens = 1;
  request.deadline = std::chrono::steady_clock::now() + timeout;
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = done->get_future();
  RequestCallbacks callbacks;
  callbacks.on_done = [done](const RequestResult& r) { done->set_value(r.status); };
  absl::Status submitted = engine->Submit(std::move(request), std::move(callbacks));
  if (!submitted.ok()) return submitted;
  if (result.wait_for(timeout + std::chrono::seconds(5)) != std::future_status::ready) {
    return absl::DeadlineExceededError("warm-up request did not finish");
  }
  return result.get();
}

}  // namespace

int RunServe(int argc, char** argv) {
  absl::StatusOr<ServeFlags> parsed = ParseServeFlags(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "glmserve serve: %s\n\n%s", std::string(parsed.status().message()).c_str(),
                 ServeUsage().c_str());
    return kExitBadInput;
  }
  ServeFlags flags = std::move(*parsed);
  if (flags.help) {
    std::fputs(ServeUsage().c_str(), stdout);
    return kExitOk;
  }
  flags.grpc.build_version = GLMSERVE_VERSION;

  // Before any thread exists, so every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Leaked on purpose: the waiter thread outlives RunServe.
  SignalWaiter& signals = *new SignalWaiter();
  signals.Start(set);

  absl::StatusOr<std::unique_ptr<GrpcServer>> server = GrpcServer::Start(flags.grpc);
  if (!server.ok()) {
    LogLine(std::string(server.status().message()));
    return kExitFailure;
  }
  LogLine(absl::StrCat("listening on ", (*server)->address(),
                       " (health NOT_SERVING until the model is warm)"));

  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(flags.model_dir, flags.load);
  if (!runner.ok()) {
    LogLine(absl::StrCat("cannot load ", flags.model_dir, ":\n", runner.status().message()));
    return kExitBadInput;
  }
  const ModelInfo info = (*runner)->info();
  absl::StatusOr<std::unique_ptr<StepExecutor>> executor = (*runner)->CreateExecutor(flags.executor);
  if (!executor.ok()) {
    LogLine(absl::StrCat("cannot create the executor: ", executor.status().message()));
    return kExitFailure;
  }
  absl::StatusOr<std::unique_ptr<InferenceEngine>> engine =
      CreateServeEngine(flags, std::move(*executor), info);
  if (!engine.ok()) {
    LogLine(absl::StrCat("cannot create the engine: ", engine.status().message()));
    return kExitFailure;
  }
  (*server)->SetEngine(engine->get(), flags.engine.scheduler.max_batch_size);
  absl::Status warm = WarmUp(engine->get(), std::chrono::milliseconds(flags.warmup_timeout_ms));
  if (!warm.ok()) {
    LogLine(absl::StrCat("warm-up failed: ", warm.ToString()));
    (*engine)->Shutdown();
    (*server)->Shutdown(std::chrono::milliseconds(0));
    return kExitFailure;
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  LogLine(absl::StrCat("model ", info.architecture, " from ", flags.model_dir, " (",
                       info.parameter_count, " parameters, ", info.device, ", ", info.compute_dtype,
                       ") ready in ", static_cast<int>(load_s * 1000), " ms"));
  signals.SetReady();
  (*server)->SetServing(true);
  LogLine(absl::StrCat("serving on ", (*server)->address()));

  signals.Wait();
  const auto drain_deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(flags.drain_timeout_ms);
  (*server)->StartDrain();
  const bool engine_idle = (*engine)->WaitIdle(std::chrono::milliseconds(flags.drain_timeout_ms));
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      drain_deadline - std::chrono::steady_clock::now());
  const bool calls_idle = (*server)->WaitIdle(std::max(left, std::chrono::milliseconds(0)));
  if (!engine_idle || !calls_idle) {
    LogLine(absl::StrCat("drain timeout: ", (*server)->active_calls(), " calls still open; cancelling"));
  }
  (*engine)->Shutdown();
  (*server)->AbortAll();
  (*server)->Shutdown(std::chrono::milliseconds(flags.shutdown_grace_ms));
  LogLine("stopped");
  return kExitOk;
}

}  // namespace glmserve
