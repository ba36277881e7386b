// Test helpers that run the real binaries: a `glmserve serve` child on loopback (--port 0) whose
// stderr is collected, and a bounded shell command's stdout. Header-only, POSIX, no gRPC, so the
// server tests and the load-harness tests share one copy.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace glmserve::testing {

// `binary serve --model MODEL --host 127.0.0.1 --port 0 EXTRA...` as a child process; SIGKILLed
// on destruction if still running.
class ServerProcess {
 public:
  ServerProcess(const std::string& binary, const std::string& model, const std::vector<std::string>& extra_flags = {}) {
    std::vector<std::string> args = {binary, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0"};
    args.insert(args.end(), extra_flags.begin(), extra_flags.end());
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      FILE* f = fdopen(fd, "r");
      char buf[4096];
      while (fgets(buf, sizeof buf, f) != nullptr) {
        std::lock_guard<std::mutex> lock(mu_);
        log_ += buf;
      }
      fclose(f);
    });
  }
  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (reader_.joinable()) reader_.join();
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Waits for "serving on 127.0.0.1:PORT" and returns PORT; 0 on timeout or when the child
  // exited (its exit is then appended to log()).
  int WaitServing(std::chrono::seconds timeout) {
    static const std::regex re("serving on 127\\.0\\.0\\.1:([0-9]+)");
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::smatch m;
        if (std::regex_search(log_, m, re)) return std::stoi(m[1]);
      }
      if (Reap()) {
        std::lock_guard<std::mutex> lock(mu_);
        log_ += "[exit status " + std::to_string(ExitCode()) + "]\n";
        return 0;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return 0;
  }
  void Signal(int sig) {
    if (pid_ > 0 && !exited_) kill(pid_, sig);
  }
  // Exit status (128 + signal when killed by one), or -1 if it did not exit in time.
  int WaitExit(std::chrono::seconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (Reap()) return ExitCode();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }
  std::string log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

 private:
  // True once the child has exited (reaped here or earlier).
  bool Reap() {
    if (!exited_ && pid_ > 0 && waitpid(pid_, &status_, WNOHANG) == pid_) exited_ = true;
    return exited_ || pid_ <= 0;
  }
  int ExitCode() const { return WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_); }

  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
  std::thread reader_;
  std::mutex mu_;
  std::string log_;
};

// Runs a shell command (bound its time with `timeout N` in the command) and returns its stdout;
// *exit_code, when given, gets the exit status (-1 if it did not exit normally).
inline std::string RunCommand(const std::string& command, int* exit_code = nullptr) {
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    if (exit_code != nullptr) *exit_code = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  const int status = pclose(p);
  if (exit_code != nullptr) *exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

}  // namespace glmserve::testing
