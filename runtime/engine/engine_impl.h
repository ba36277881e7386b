// Factory for the InferenceEngine of runtime/engine.h: one engine thread around a Scheduler.
// LibTorch-free; the model comes in as a StepExecutor. Contract: runtime/engine/README.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/engine/clock.h"
#include "runtime/engine/scheduler.h"
#include "runtime/generation.h"
#include "runtime/step_executor.h"

namespace glmserve {

struct EngineOptions {
  // Batching, budget, AIMD and fault-injection options; see scheduler.h.
  SchedulerOptions scheduler;
  // Most accepted requests not yet running (the submit inbox plus the waiting queue; requests
  // preempted back to waiting count too) beyond those the batch's free slots (AIMD's limit less
  // the running requests) will take at the next step. At the limit Submit returns
  // RESOURCE_EXHAUSTED at once with "retry after N ms" in the message. Must be >= 1.
  int32_t max_queued_requests = 1024;
  // Test hook, called on the engine thread whenever the AIMD batch limit changes. Null = none.
  std::function<void(int32_t old_limit, int32_t new_limit)> on_batch_limit_change;
  // Called on the engine thread after every step attempt (SchedulerHooks::on_step_end): a
  // heartbeat for watchdogs and the batch size for metrics. A status other than OK or
  // RESOURCE_EXHAUSTED (an executor exception, a malformed result) is an engine fault; it is
  // reported before that batch's requests finish with it. Must not block. Null = none.
  std::function<void(int32_t batch_size, const absl::Status& status)> on_step_end;
};

absl::Status ValidateEngineOptions(const EngineOptions& options);

// Starts the engine thread. The engine owns `executor` and calls it only from that thread.
// `clock` null = RealClock. INVALID_ARGUMENT naming the field when an option is bad.
absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateInferenceEngine(EngineOptions options,
                                                                       std::unique_ptr<StepExecutor> executor,
                                                                       ModelInfo model_info,
                                                                       std::shared_ptr<Clock> clock = nullptr);

}  // namespace glmserve
