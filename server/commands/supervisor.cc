#include "server/commands/supervisor.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/commands/cli.h"
#include "server/ops/logging.h"

namespace glmserve {
namespace {

using SteadyClock = std::chrono::steady_clock;

std::string Describe(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return absl::StrCat("status ", status);
}

}  // namespace

sigset_t DrainSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  struct sigaction hup {};
  if (!(sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler == SIG_IGN)) sigaddset(&set, SIGHUP);
  return set;
}

int RunSupervisor(int argc, char** argv, const ServeFlags& flags) {
  std::vector<std::string> args = {"/proc/self/exe"};
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) args[0] = std::string(self, static_cast<size_t>(n));
  args.push_back("serve");
  for (int i = 1; i < argc; ++i) {
    // Every spelling the flag parser takes (--supervise, --supervise=true, --supervise true): a
    // child that supervised in turn would start children forever.
    const std::string arg = argv[i];
    if (arg == "--supervise") {
      if (i + 1 < argc && (std::string_view(argv[i + 1]) == "true" || std::string_view(argv[i + 1]) == "false")) ++i;
      continue;
    }
    if (arg.rfind("--supervise=", 0) != 0) args.push_back(arg);
  }

  sigset_t set, old_mask;
  // A hang-up forwarded beside the terminal's own reaches the child twice, which it takes as one.
  const sigset_t drain = DrainSignals();
  set = drain;
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, &old_mask);

  std::deque<SteadyClock::time_point> failures;
  int restarts = 0;
  bool stopping = false;
  for (;;) {
    const pid_t child = fork();
    if (child < 0) {
      LogEvent(LogLevel::kError, "supervisor_fork_failed", "",
               absl::StrCat("supervisor: fork failed: ", strerror(errno)));
      return kExitFailure;
    }
    if (child == 0) {
      // If the supervisor itself is killed, the server drains and exits instead of lingering.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      setenv(kSupervisedEnv, "1", 1);
      sigprocmask(SIG_SETMASK, &old_mask, nullptr);
      std::vector<char*> cargv;
      for (auto& a : args) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      execv(cargv[0], cargv.data());
      _exit(127);
    }
    LogEvent(LogLevel::kInfo, "child_started", "", absl::StrCat("supervisor: started server child pid ", child),
             {{"child_pid", child}, {"restarts", restarts}, {"supervisor_pid", getpid()}});
    const SteadyClock::time_point started = SteadyClock::now();
    int status = 0;
    for (;;) {
      timespec timeout{0, 200'000'000};
      const int sig = sigtimedwait(&set, nullptr, &timeout);
      if (sig > 0 && sigismember(&drain, sig) == 1) {
        LogEvent(LogLevel::kInfo, "supervisor_signal", "",
                 absl::StrCat("supervisor: signal ", sig, ": forwarding to child ", child),
                 {{"signal", sig}, {"child_pid", child}});
        stopping = true;
        kill(child, sig);
      }
      const pid_t r = waitpid(child, &status, WNOHANG);
      if (r == child) break;
    }
    const double ran_s = std::chrono::duration<double>(SteadyClock::now() - started).count();
    // A child that drained (0) ended as asked; any other end is what the supervisor is for.
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    LogEvent(clean ? LogLevel::kInfo : LogLevel::kWarn, "child_exited", "",
             absl::StrCat("supervisor: child ", child, " ended: ", Describe(status)),
             {{"child_pid", child}, {"status", Describe(status)}, {"ran_s", ran_s}});
    if (stopping) return WIFEXITED(status) ? WEXITSTATUS(status) : kExitFailure;
    // Exit 2 is a configuration error (a port in use, a bad flag, an unloadable checkpoint): a
    // restart would fail the same way, so the supervisor stops with the same code.
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitBadInput) {
      LogEvent(LogLevel::kError, "supervisor_config_error", "",
               "supervisor: the server exited 2 (configuration error: port in use, bad flag or "
               "unloadable checkpoint; see its error line above); not restarting",
               {{"child_pid", child}});
      return kExitBadInput;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitOk) return kExitOk;
    const SteadyClock::time_point now = SteadyClock::now();
    failures.push_back(now);
    const auto window = std::chrono::milliseconds(flags.restart_window_ms);
    while (!failures.empty() && now - failures.front() > window) failures.pop_front();
    const int in_window = static_cast<int>(failures.size());
    if (in_window >= flags.max_restarts) {
      LogEvent(LogLevel::kError, "supervisor_crash_loop", "",
               absl::StrCat("supervisor: the server died ", in_window, " times within ", flags.restart_window_ms / 1000,
                            " s (last: ", Describe(status), "); giving up"),
               {{"failures", in_window}});
      return kExitFailure;
    }
    const int64_t delay_ms = std::min<int64_t>(flags.restart_backoff_ms * (int64_t{1} << std::min(in_window - 1, 20)),
                                               flags.restart_backoff_max_ms);
    LogEvent(LogLevel::kWarn, "child_restart_scheduled", "",
             absl::StrCat("supervisor: restarting the server in ", delay_ms, " ms"),
             {{"backoff_ms", delay_ms}, {"failures_in_window", in_window}});
    const SteadyClock::time_point until = SteadyClock::now() + std::chrono::milliseconds(delay_ms);
    while (SteadyClock::now() < until) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - SteadyClock::now());
      timespec ts{static_cast<time_t>(left.count() / 1'000'000'000), static_cast<long>(left.count() % 1'000'000'000)};
      const int sig = sigtimedwait(&set, nullptr, &ts);
      if (sig > 0 && sigismember(&drain, sig) == 1) return kExitOk;  // no child to drain
    }
    ++restarts;
  }
}

}  // namespace glmserve
