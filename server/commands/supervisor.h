// `glmserve serve --supervise`: the same command runs as a child process; the supervisor restarts
// it when it dies (signal, abort, exit 1: also an engine crash loop, which the child exits on),
// with exponential backoff (--restart-backoff-ms doubled per failure within --restart-window-ms,
// capped by --restart-backoff-max-ms) and gives up after --max-restarts failures in the window
// (exit 1). SIGTERM/SIGINT/SIGHUP are forwarded to the child for a clean drain; the supervisor then
// exits with the child's code. A child exiting 0 (drained) or 2 (bad flags or an unloadable
// checkpoint: a restart cannot help) is not restarted.
#pragma once

#include <signal.h>

#include "server/commands/serve_flags.h"

namespace glmserve {

// The signals that ask serve (and the supervisor) to drain: SIGTERM, SIGINT and SIGHUP (a closing
// terminal or SSH session), SIGHUP left out where it is ignored already (nohup): a blocked signal
// taken by sigwait would undo the ignoring.
sigset_t DrainSignals();

// Set in the child's environment: the server knows a supervisor restarts it, so an engine crash
// loop exits 1 (a fresh process) instead of staying up NOT_SERVING.
inline constexpr char kSupervisedEnv[] = "GLMSERVE_SUPERVISED";

// argv[0] is "serve"; the child gets the same arguments without --supervise.
int RunSupervisor(int argc, char** argv, const ServeFlags& flags);

}  // namespace glmserve
