// Flags of `glmserve serve`: every limit has a default listed by --help.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/engine/engine_impl.h"
#include "runtime/model_runner.h"
#include "server/grpc_service.h"

namespace glmserve {

struct ServeFlags {
  bool help = false;
  std::string model_dir;
  LoadOptions load;
  ExecutorOptions executor;
  EngineOptions engine;  // defaults are the engine's own (runtime/engine/engine_impl.h)
  GrpcServerOptions grpc;
  int64_t drain_timeout_ms = 30'000;    // SIGTERM: wait this long for in-flight requests
  int64_t shutdown_grace_ms = 5'000;    // then this long for gRPC to close open calls
  int64_t warmup_timeout_ms = 300'000;  // the warm-up request must finish within this
};

// Parses argv (argv[0] is "serve"). INVALID_ARGUMENT names the bad flag.
absl::StatusOr<ServeFlags> ParseServeFlags(int argc, char** argv);
std::string ServeUsage();  // lists every flag with its default

}  // namespace glmserve
