#include "server/commands/serve_engine.h"

#include <utility>

#include "runtime/engine/engine_impl.h"

namespace glmserve {

absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateServeEngine(const ServeFlags& flags,
                                                                   std::unique_ptr<StepExecutor> executor,
                                                                   const ModelInfo& info) {
  return CreateInferenceEngine(flags.engine, std::move(executor), info);
}

}  // namespace glmserve
