// One prompt through a fresh engine over a loaded model: how the CLI's `generate`, the
// generation benchmark and the model tests generate. There is one generation loop, the engine's
// (runtime/engine/), with its validation, scheduling and sampling; this is a client of it, like
// the servers. LibTorch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "runtime/model_runner.h"

namespace glmserve {

struct GenerationOutput {
  std::vector<int32_t> output_ids;  // generated ids only
  std::vector<float> first_logits;  // raw fp32 logits at the first generated position
  FinishReason finish_reason = FinishReason::kUnspecified;
};

// An engine over `runner` for one sequence at a time (batch 1) whose KV pool holds `max_tokens`
// tokens (prompt + max_new_tokens; capped at the model's context, so a request that cannot fit is
// refused by the engine's own checks rather than allocated) and whose step budget takes such a
// prompt in one step (chunk boundaries would change the floating-point sums). `executor_options`
// block_size, num_blocks and a null log are set here (the pool size is not news to a one-shot
// caller); its hooks are kept. For callers that submit many one-at-a-time requests (benchmarks).
absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateSingleSequenceEngine(
    ModelRunner& runner, int64_t max_tokens, ExecutorOptions executor_options = ExecutorOptions());

// Runs `input_ids` with `params` on a CreateSingleSequenceEngine sized for this request.
// `on_token` (optional) sees each new id on the engine thread. Refusals are the engine's
// (INVALID_ARGUMENT naming the field); a failed request returns its status.
// `multimodal` (glm4v): the prompt's images and 3-D positions, input_ids already expanded.
absl::StatusOr<GenerationOutput> GenerateOnce(ModelRunner& runner, const std::vector<int32_t>& input_ids,
                                              const GenerationParams& params,
                                              const std::function<void(int32_t)>& on_token = nullptr,
                                              std::shared_ptr<const MultimodalPrompt> multimodal = nullptr);

}  // namespace glmserve
