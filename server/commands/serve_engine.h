// Builds the InferenceEngine for `serve` from its flags (the seam to runtime/engine/).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/step_executor.h"
#include "server/commands/serve_flags.h"

namespace glmserve {

absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateServeEngine(const ServeFlags& flags,
                                                                   std::unique_ptr<StepExecutor> executor,
                                                                   const ModelInfo& info);

}  // namespace glmserve
