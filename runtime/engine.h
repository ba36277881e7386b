// The inference engine: one thread owns scheduling state and the executor; any thread submits.
// LibTorch-free: the model is behind StepExecutor.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
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
  // glm4v: the prompt's images and 3-D positions (input_ids already hold each image's
  // image tokens, expanded). Null for text prompts.
  std::shared_ptr<const MultimodalPrompt> multimodal;
  // A front end admitted it before the drain began (it may have waited in the front end's own
  // queue since): taken while draining, as requests already queued are. Not after Shutdown.
  bool admitted_before_drain = false;
};

struct RequestResult {
  absl::Status status;  // OK, CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ...
  FinishReason finish_reason = FinishReason::kUnspecified;
  std::vector<int32_t> output_ids;  // every generated id
  int32_t prompt_tokens = 0;
  // Of prompt_tokens, the positions whose KV the prefix cache supplied when the request was first
  // admitted (0 without prefix caching); they were not prefilled again.
  int32_t cached_prompt_tokens = 0;
  double queue_ms = 0;  // submit -> first scheduled
  double ttft_ms = 0;   // submit -> first token
  double total_ms = 0;  // submit -> done
};

// Called on the engine thread: they must be quick and never block (hand off to your own queue).
struct RequestCallbacks {
  std::function<void(const std::vector<int32_t>& new_ids)> on_tokens;  // optional
  std::function<void(const RequestResult& result)> on_done;            // exactly once per accepted request
  // True when on_tokens only observes (nothing reaches the client before on_done, e.g. a unary
  // call): a supervising wrapper may then rerun the request from scratch after an engine fault
  // even though tokens were generated. The engine itself ignores it.
  bool replayable_after_tokens = false;
  // Optional: called before such a rerun (never during one of this request's other callbacks);
  // on_tokens then starts again from the first generated id, so what was derived from the ids
  // given so far (decoded text, a stop string's progress) must be dropped.
  std::function<void()> on_replay;
};

// A snapshot of the engine's scheduling state, for metrics and logs. Counters are cumulative.
struct EngineStats {
  int32_t running = 0;         // sequences holding KV blocks (in the running batch)
  int32_t waiting = 0;         // accepted, not running (queued, or preempted and waiting to resume)
  int32_t batch_limit = 0;     // current AIMD limit on running sequences (<= max_batch_size)
  int32_t max_batch_size = 0;  // the configured ceiling of batch_limit
  int64_t oom_events = 0;      // steps that failed with RESOURCE_EXHAUSTED (real or injected)
  int64_t preemptions = 0;     // sequences sent back to waiting (KV pool full or batch shrink)
  int64_t steps = 0;           // successful steps
  int64_t finished = 0;        // requests whose on_done has run
  int32_t blocks_used = 0;     // KV blocks owned by sequences
  int32_t blocks_free = 0;     // KV blocks in the pool
  int32_t blocks_total = 0;
  int32_t blocks_cached = 0;            // KV blocks the prefix cache holds (in use or not)
  int64_t prefix_cache_hit_tokens = 0;  // prompt positions taken from the prefix cache
  int64_t prompt_tokens_scheduled = 0;  // prompt positions of admissions (cached or computed)
  // Prompt tokens the last step that decoded could carry beside its decodes (what the caps or,
  // while it applied, the thin budget left); 0 before any such step.
  int32_t prefill_budget_with_decodes = 0;
  // Where the engine thread's time went over every step attempt (nanoseconds, cumulative): before
  // the step (deadlines, admission, preemption: planning), in the executor's own host work (checks,
  // staging, launches, host sampling), waiting for the accelerator (StepResult::device_wait_us),
  // and after the step (handing out tokens through the callbacks, finishing requests). On a GPU
  // everything but the wait is time the GPU may idle between steps.
  int64_t schedule_ns = 0;
  int64_t executor_host_ns = 0;
  int64_t device_wait_ns = 0;
  int64_t commit_ns = 0;
  // The accelerator's own timing of the steps (StepResult::device_busy_us / device_idle_us; 0
  // where nothing times them, e.g. on a CPU), nanoseconds, cumulative: busy running the steps'
  // work, and idle between one step's end and the next one's start while the engine had work
  // running (a gap after the server ran out of work is not counted). idle / (busy + idle) is the
  // share of the time the GPU waited for the host.
  int64_t device_busy_ns = 0;
  int64_t device_idle_ns = 0;
};

// Submit's RESOURCE_EXHAUSTED carries its retry hint as a typed payload besides the message, so
// front ends never read it back out of the text.
inline constexpr char kRetryAfterMsPayload[] = "type.glmserve.dev/retry-after-ms";
inline void SetRetryAfterMs(absl::Status* status, int64_t ms) {
  char bytes[sizeof ms];
  std::memcpy(bytes, &ms, sizeof ms);
  status->SetPayload(kRetryAfterMsPayload, absl::Cord(absl::string_view(bytes, sizeof bytes)));
}
// 0 when the status carries no hint.
inline int64_t RetryAfterMs(const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryAfterMsPayload);  // absl::optional on Debian
  if (!payload || payload->size() != sizeof(int64_t)) return 0;
  int64_t ms = 0;
  std::memcpy(&ms, std::string(*payload).data(), sizeof ms);
  return ms;
}

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
  // Thread-safe snapshot, refreshed after every engine step.
  virtual EngineStats stats() const { return EngineStats(); }
};

}  // namespace glmserve
