// The proto side of the typed request (server/request/request.h): glmserve.v1.InferRequest ->
// GenerateRequest, and the proto's finish reasons. Limits and checks are request_validation.h's,
// shared with the HTTP front end.
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "glmserve/v1/inference.pb.h"
#include "runtime/engine.h"
#include "runtime/generation.h"
#include "server/request/request.h"
#include "server/request/request_validation.h"

namespace glmserve {

// Every field of the proto, as is (validation resolves defaults and ranges). Refused here only
// what the typed request cannot hold: a message with both content and parts, an empty content
// part, `images` beside messages. Image fields are named `messages[i].parts[j].image.data` /
// `.mime_type` and `images[k].data`.
std::optional<Refusal> FromProto(const v1::InferRequest& request, GenerateRequest* out);

// FromProto + ValidateRequest in the proto's dialect: INVALID_ARGUMENT names the field and the
// accepted range (request_id and deadline are left to the caller).
absl::StatusOr<InferenceRequest> ValidateInferRequest(const v1::InferRequest& request, const FrontendLimits& limits,
                                                      const ValidationModel& model);

// Checks a client-supplied request_id (empty is fine: the server generates one).
absl::Status ValidateRequestId(const std::string& request_id, const FrontendLimits& limits);

v1::FinishReason ToProtoFinishReason(FinishReason reason);

}  // namespace glmserve
