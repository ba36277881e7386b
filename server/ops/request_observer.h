// Hooks from the request session (both front ends, server/request/request_session.h) to observability
// (metrics). No gRPC or LibTorch types.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/engine.h"

namespace glmserve {

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // Every gRPC Infer/InferStream call and HTTP API request ends here exactly once: `code` is
  // CodeName() of its status ("OK", "UNAVAILABLE", ...: the same refusal has the same name on
  // both front ends); `result` is null when it was refused before the engine took it. Called on
  // front-end threads or delivery workers; must not block.
  virtual void OnRequestFinished(const char* code, const RequestResult* result) = 0;
  // Each image of a request the engine took (after its checks; a refused request's images are not
  // counted): the tokens it became and the host's decode plus preprocessing time. Front-end threads.
  virtual void OnImageAccepted(int32_t /*tokens*/, double /*host_seconds*/) {}
};

}  // namespace glmserve
