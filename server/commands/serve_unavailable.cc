// `serve` in a build configured with -DGLMSERVE_WITH_GRPC=OFF.
#include <cstdio>

#include "server/commands/serve_command.h"

namespace glmserve {
int RunServe(int, char**) {
  std::fputs("glmserve serve: this build has no gRPC front end (configured with GLMSERVE_WITH_GRPC=OFF)\n", stderr);
  return 1;
}
}  // namespace glmserve
