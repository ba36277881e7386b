#include "runtime/engine/run_request.h"

#include <future>
#include <memory>
#include <utility>

namespace glmserve {

absl::StatusOr<RequestResult> RunRequest(InferenceEngine& engine, InferenceRequest request,
                                         std::function<void(const std::vector<int32_t>&)> on_tokens) {
  auto done = std::make_shared<std::promise<RequestResult>>();
  std::future<RequestResult> result = done->get_future();
  RequestCallbacks callbacks;
  callbacks.on_tokens = std::move(on_tokens);
  callbacks.on_done = [done](const RequestResult& r) { done->set_value(r); };
  if (absl::Status submitted = engine.Submit(std::move(request), std::move(callbacks)); !submitted.ok()) {
    return submitted;
  }
  return result.get();  // on_done runs exactly once per accepted request, shutdown included
}

}  // namespace glmserve
