#include "server/frontend/grpc_validation.h"

#include "absl/strings/str_cat.h"

namespace glmserve {

namespace {

ImageData ImageFromProto(const v1::Image& image, const std::string& path, const std::string& part_path) {
  ImageData out;
  out.bytes = image.data();
  out.mime_type = image.mime_type();
  out.field = path + ".data";
  out.mime_field = path + ".mime_type";
  out.part_field = part_path;
  return out;
}

}  // namespace

std::optional<Refusal> FromProto(const v1::InferRequest& request, GenerateRequest* out_request) {
  GenerateRequest& out = *out_request;
  out.input_ids.assign(request.input_ids().begin(), request.input_ids().end());
  out.prompt = request.prompt();
  out.messages.reserve(request.messages_size());
  for (int i = 0; i < request.messages_size(); ++i) {
    const v1::Message& m = request.messages(i);
    const std::string path = absl::StrCat("messages[", i, "]");
    ChatMessage message;
    message.role = m.role();
    message.content = m.content();
    if (m.parts_size() > 0 && !m.content().empty()) {
      return InvalidField(path, "set content or parts, not both");
    }
    std::string text;
    for (int j = 0; j < m.parts_size(); ++j) {
      const v1::ContentPart& part = m.parts(j);
      const std::string part_path = absl::StrCat(path, ".parts[", j, "]");
      switch (part.part_case()) {
        case v1::ContentPart::kText:
          if (!text.empty()) text += "\n";
          text += part.text();
          message.parts.push_back({false, part.text(), -1});
          break;
        case v1::ContentPart::kImage:
          message.parts.push_back({true, std::string(), static_cast<int32_t>(out.images.size())});
          out.images.push_back(ImageFromProto(part.image(), part_path + ".image", part_path));
          break;
        case v1::ContentPart::PART_NOT_SET:
          return InvalidField(part_path, "empty content part: set text or image");
      }
    }
    if (m.parts_size() > 0) message.content = std::move(text);
    out.messages.push_back(std::move(message));
  }
  for (int i = 0; i < request.images_size(); ++i) {
    if (!out.messages.empty()) {
      return InvalidField(absl::StrCat("images[", i, "]"),
                          "images go with input_ids; a chat prompt carries its images in messages[].parts");
    }
    const std::string path = absl::StrCat("images[", i, "]");
    out.images.push_back(ImageFromProto(request.images(i), path, ""));
  }
  out.max_pixels = request.max_pixels();
  // Explicit presence: a set 0 is a value out of range, not "the default" (which is unset).
  if (request.has_max_new_tokens() && request.max_new_tokens() == 0) {
    return InvalidField("max_new_tokens", "0 new tokens; set at least 1, or leave it unset for the server's default");
  }
  if (request.has_top_p() && request.top_p() == 0.0f) {
    return InvalidField("top_p", "0 is outside (0, 1]; leave it unset to keep every token (1)");
  }
  out.max_new_tokens = request.max_new_tokens();
  out.min_new_tokens = request.min_new_tokens();
  out.temperature = request.temperature();
  out.top_p = request.top_p();
  out.top_k = request.top_k();
  if (request.has_seed()) out.seed = request.seed();
  out.frequency_penalty = request.frequency_penalty();
  out.presence_penalty = request.presence_penalty();
  out.repetition_penalty = request.repetition_penalty();
  out.stop.assign(request.stop().begin(), request.stop().end());
  out.stop_token_ids.assign(request.stop_token_ids().begin(), request.stop_token_ids().end());
  out.request_id = request.request_id();
  return std::nullopt;
}

absl::StatusOr<InferenceRequest> ValidateInferRequest(const v1::InferRequest& request, const FrontendLimits& limits,
                                                      const ValidationModel& model) {
  InferenceRequest out;
  GenerateRequest typed;
  if (auto refusal = FromProto(request, &typed)) return refusal->ToStatus();
  if (auto refusal = ValidateRequest(typed, limits, model, Dialect::kProto, &out)) return refusal->ToStatus();
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
