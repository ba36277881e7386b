// Hooks from the gRPC front end to observability (metrics). No gRPC or LibTorch types.
#pragma once

#include <string>

#include "runtime/engine.h"

namespace glmserve {

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // Every Infer/InferStream call ends here exactly once: `code` is the gRPC code name ("OK",
  // "UNAVAILABLE", ...); `result` is null when the call was refused before the engine took it.
  // Called on gRPC or engine threads; must not block.
  virtual void OnRequestFinished(const char* code, const RequestResult* result) = 0;
};

}  // namespace glmserve
