#include "runtime/generate_once.h"

#include <algorithm>
#include <string>
#include <utility>

#include "runtime/engine/engine_impl.h"
#include "runtime/engine/run_request.h"
#include "runtime/status_macros.h"

namespace glmserve {

absl::StatusOr<std::unique_ptr<InferenceEngine>> CreateSingleSequenceEngine(ModelRunner& runner, int64_t max_tokens,
                                                                            ExecutorOptions executor_options) {
  constexpr int32_t kBlockSize = 16;
  const ModelInfo& info = runner.info();
  const int64_t tokens = std::clamp<int64_t>(max_tokens, 1, std::max<int64_t>(info.max_position_embeddings, 1));
  executor_options.block_size = kBlockSize;
  executor_options.num_blocks = static_cast<int32_t>((tokens + kBlockSize - 1) / kBlockSize);
  if (!executor_options.log) executor_options.log = [](const std::string&) {};
  GLM_ASSIGN_OR_RETURN(std::unique_ptr<StepExecutor> executor, runner.CreateExecutor(executor_options));
  EngineOptions engine_options;
  engine_options.scheduler.max_batch_size = 1;
  engine_options.scheduler.max_tokens_per_step =
      static_cast<int32_t>(std::max<int64_t>(engine_options.scheduler.max_tokens_per_step, tokens));
  engine_options.scheduler.log = [](const std::string&) {};
  return CreateInferenceEngine(engine_options, std::move(executor), info);
}

absl::StatusOr<GenerationOutput> GenerateOnce(ModelRunner& runner, const std::vector<int32_t>& input_ids,
                                              const GenerationParams& params,
                                              const std::function<void(int32_t)>& on_token,
                                              std::shared_ptr<const MultimodalPrompt> multimodal) {
  GenerationOutput output;
  ExecutorOptions executor_options;
  executor_options.on_sampled_logits = [&output](int64_t, int32_t num_generated, const float* logits, int32_t vocab) {
    if (num_generated == 0) output.first_logits.assign(logits, logits + vocab);
  };
  GLM_ASSIGN_OR_RETURN(
      std::unique_ptr<InferenceEngine> engine,
      CreateSingleSequenceEngine(runner, static_cast<int64_t>(input_ids.size()) + std::max(params.max_new_tokens, 0),
                                 std::move(executor_options)));
  InferenceRequest request;
  request.request_id = "generate";
  request.input_ids = input_ids;
  request.params = params;
  request.multimodal = std::move(multimodal);
  std::function<void(const std::vector<int32_t>&)> on_tokens;
  if (on_token) {
    on_tokens = [&on_token](const std::vector<int32_t>& ids) {
      for (int32_t id : ids) on_token(id);
    };
  }
  absl::StatusOr<RequestResult> result = RunRequest(*engine, std::move(request), std::move(on_tokens));
  engine->Shutdown();  // joins the engine thread before `output` (its logits sink) goes
  GLM_RETURN_IF_ERROR(result.status());
  GLM_RETURN_IF_ERROR(result->status);
  output.output_ids = std::move(result->output_ids);
  output.finish_reason = result->finish_reason;
  return output;
}

}  // namespace glmserve
