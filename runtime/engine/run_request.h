// A blocking client of an InferenceEngine: submit one request, wait for its on_done. For callers
// that have one request and nothing else to do meanwhile (the CLI's `generate`, benchmarks,
// tests); servers use the callbacks directly.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine.h"

namespace glmserve {

// Submit's refusal as the status; otherwise the request's result (whose own status may be an
// error: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ...). `on_tokens` (optional) runs on the
// engine thread as RequestCallbacks::on_tokens does.
absl::StatusOr<RequestResult> RunRequest(InferenceEngine& engine, InferenceRequest request,
                                         std::function<void(const std::vector<int32_t>& new_ids)> on_tokens = nullptr);

}  // namespace glmserve
