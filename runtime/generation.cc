#include "runtime/generation.h"

namespace glmserve {

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
