// The inference engine: one thread owns scheduling state and the executor; any thread submits.
// LibTorch-free: the model is behind StepExecutor.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/generation.h"
#include "runtime/step_executor.h"

namespace glmserve {

struct InferenceRequest {
  std::string request_id;  // unique among in-flight requests; used by Cancel() and in logs
  std::vector<int32_t> input_ids;
  GenerationParams params;
  // Absolute deadline; time_point::max() = none. Expired requests end with DEADLINE_EXCEEDED.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  int32_t priority = 0;  // higher is admitted first; ties in arrival order
};

struct RequestResult {
  absl::Status status;  // OK, CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ...
  FinishReason finish_reason = FinishReason::kUnspecified;
  std::vector<int32_t> output_ids;  // every generated id
  int32_t prompt_tokens = 0;
  double queue_ms = 0;  // submit -> first scheduled
  double ttft_ms = 0;   // submit -> first token
  double total_ms = 0;  // submit -> done
};

// Called on the engine thread: they must be quick and never block (hand off to your own queue).
struct RequestCallbacks {
  std::function<void(const std::vector<int32_t>& new_ids)> on_tokens;  // optional
  std::function<void(const RequestResult& result)> on_done;            // exactly once per accepted request
};

class InferenceEngine {
 public:
  virtual ~InferenceEngine() = default;
  // Never blocks on the engine. On OK the request is owned by the engine and on_done will be
  // called exactly once. Otherwise nothing was taken: RESOURCE_EXHAUSTED when the waiting queue
  // is full (message carries a retry-after hint), UNAVAILABLE when draining/stopped,
  // INVALID_ARGUMENT when the request can never fit (prompt + max_new_tokens > KV capacity).
  virtual absl::Status Submit(InferenceRequest request, RequestCallbacks callbacks) = 0;
  // Cancels a queued or running request; its on_done reports CANCELLED. Unknown ids are ignored.
  virtual void Cancel(const std::string& request_id) = 0;
  // Stops accepting; in-flight and queued requests run to completion.
  virtual void StartDrain() = 0;
  // Blocks until no request is queued or running, or the timeout passes; true when idle.
  virtual bool WaitIdle(std::chrono::milliseconds timeout) = 0;
  // Cancels everything still in flight and joins the engine thread.
  virtual void Shutdown() = 0;
  virtual const ModelInfo& model_info() const = 0;
};

}  // namespace glmserve
