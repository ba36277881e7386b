#include "runtime/generation.h"

namespace glmserve {

std::vector<float> ExpandPixelCodes(const std::vector<uint8_t>& codes, const std::vector<float>& table,
                                    int64_t patch_dim) {
  std::vector<float> values(codes.size());
  if (patch_dim <= 0 || table.size() < 3 * 256) return values;
  const int64_t per_channel = patch_dim / 3;
  for (size_t i = 0; i < codes.size(); ++i) {
    const int64_t channel = static_cast<int64_t>(i % static_cast<size_t>(patch_dim)) / per_channel;
    values[i] = table[static_cast<size_t>(channel * 256 + codes[i])];
  }
  return values;
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kUnspecified:
      return "unspecified";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kDeadline:
      return "deadline";
    case FinishReason::kError:
      return "error";
  }
  return "unspecified";
}

}  // namespace glmserve
