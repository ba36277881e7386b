// Closed-loop clients in-process: C clients each keep one request in flight on an engine; when one
// finishes, its client sends the next from the calling thread (engine callbacks must not block or
// re-enter the engine). Shared by engine_bench and engine_host_bench.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "runtime/engine.h"

namespace glmserve::bench {

struct ClosedLoopOptions {
  int32_t clients = 1;
  // Stop sending after this many requests, or once `stop_sending` has passed, whichever is first;
  // the requests sent by then finish.
  int64_t max_requests = std::numeric_limits<int64_t>::max();
  std::chrono::steady_clock::time_point stop_sending = std::chrono::steady_clock::time_point::max();
  // How long to wait for any one finish before giving up (DEADLINE_EXCEEDED).
  std::chrono::steady_clock::duration finish_timeout = std::chrono::minutes(10);
};

// Sends the i-th request (0, 1, ...) so that `on_done` hears its result exactly once, from any
// thread; an error when it was refused.
using ClosedLoopSend = std::function<absl::Status(int64_t i, std::function<void(const RequestResult&)> on_done)>;

// The results of every request sent through `send`, in finish order. An error when a request is
// refused or none finishes within finish_timeout.
inline absl::StatusOr<std::vector<RequestResult>> RunClosedLoopWith(const ClosedLoopOptions& options,
                                                                    const ClosedLoopSend& send_one) {
  // Shared with the callbacks: on an early return, requests still in flight finish into it.
  struct Finished {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<RequestResult> results;
  };
  auto finished = std::make_shared<Finished>();
  int64_t sent = 0;
  auto send = [&]() -> absl::Status {
    const int64_t id = sent++;
    absl::Status submitted = send_one(id, [finished](const RequestResult& result) {
      std::lock_guard<std::mutex> lock(finished->mu);
      finished->results.push_back(result);
      finished->cv.notify_all();
    });
    if (!submitted.ok()) return absl::Status(submitted.code(), absl::StrCat("request ", id, ": ", submitted.message()));
    return absl::OkStatus();
  };
  auto may_send = [&] {
    return sent < options.max_requests && std::chrono::steady_clock::now() < options.stop_sending;
  };
  for (int32_t c = 0; c < options.clients && may_send(); ++c) {
    if (absl::Status s = send(); !s.ok()) return s;
  }
  size_t seen = 0;
  while (seen < static_cast<size_t>(sent)) {
    std::unique_lock<std::mutex> lock(finished->mu);
    if (!finished->cv.wait_for(lock, options.finish_timeout, [&] { return finished->results.size() > seen; })) {
      return absl::DeadlineExceededError(
          absl::StrCat("no request finished within the timeout; ", seen, " of ", sent, " done"));
    }
    const size_t now_done = finished->results.size();
    lock.unlock();
    for (; seen < now_done; ++seen) {
      if (!may_send()) continue;
      if (absl::Status s = send(); !s.ok()) return s;
    }
  }
  std::lock_guard<std::mutex> lock(finished->mu);
  return std::move(finished->results);
}

// The same, each request submitted to `engine` directly: `make_request(i)` builds the i-th,
// `on_tokens`, when set, is every request's streaming callback.
inline absl::StatusOr<std::vector<RequestResult>> RunClosedLoop(
    InferenceEngine* engine, const ClosedLoopOptions& options,
    const std::function<InferenceRequest(int64_t)>& make_request,
    const std::function<void(const std::vector<int32_t>&)>& on_tokens = nullptr) {
  return RunClosedLoopWith(options, [&](int64_t i, std::function<void(const RequestResult&)> on_done) {
    RequestCallbacks callbacks;
    callbacks.on_tokens = on_tokens;
    callbacks.on_done = std::move(on_done);
    return engine->Submit(make_request(i), std::move(callbacks));
  });
}

}  // namespace glmserve::bench
