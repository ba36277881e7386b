#include "server/frontend/grpc_validation.h"

namespace glmserve {

GenerateRequest FromProto(const v1::InferRequest& request) {
  GenerateRequest out;
  out.input_ids.assign(request.input_ids().begin(), request.input_ids().end());
  out.prompt = request.prompt();
  out.messages.reserve(request.messages_size());
  for (const v1::Message& m : request.messages()) out.messages.push_back({m.role(), m.content()});
  out.max_new_tokens = request.max_new_tokens();
  out.min_new_tokens = request.min_new_tokens();
  out.temperature = request.temperature();
  out.top_p = request.top_p();
  out.top_k = request.top_k();
  out.seed = request.seed();
  out.frequency_penalty = request.frequency_penalty();
  out.presence_penalty = request.presence_penalty();
  out.repetition_penalty = request.repetition_penalty();
  out.stop.assign(request.stop().begin(), request.stop().end());
  out.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  out.request_id = request.request_id();
  return out;
}

absl::StatusOr<InferenceRequest> ValidateInferRequest(const v1::InferRequest& request, const FrontendLimits& limits,
                                                      const ValidationModel& model) {
  InferenceRequest out;
  if (auto refusal = ValidateRequest(FromProto(request), limits, model, Dialect::kProto, &out)) {
    return refusal->ToStatus();
  }
  return out;
}

absl::Status ValidateRequestId(const std::string& request_id, const FrontendLimits& limits) {
  if (auto refusal = CheckRequestId(request_id, limits, Dialect::kProto)) return refusal->ToStatus();
  return absl::OkStatus();
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kUnspecified:
      return v1::UNSPECIFIED;
    case FinishReason::kLength:
      return v1::LENGTH;
    case FinishReason::kStop:
      return v1::STOP;
    case FinishReason::kCancelled:
      return v1::CANCELLED;
    case FinishReason::kDeadline:
      return v1::DEADLINE;
    case FinishReason::kError:
      return v1::ERROR;
  }
  return v1::UNSPECIFIED;
}

}  // namespace glmserve
