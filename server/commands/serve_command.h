// The `serve` subcommand: gRPC front end over the engine.
#pragma once

namespace glmserve {

// argv[0] is "serve". Returns the process exit code.
int RunServe(int argc, char** argv);

}  // namespace glmserve
