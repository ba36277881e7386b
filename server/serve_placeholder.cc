#include <cstdio>

#include "server/serve_command.h"

namespace glmserve {
int RunServe(int, char**) {
  std::fputs("glmserve serve: the gRPC front end is not built yet\n", stderr);
  return 1;
}
}  // namespace glmserve
