// The glmload binary against the real `glmserve serve` binary on the bundled tiny model (loopback,
// --port 0): a short streamed sweep produces the table, the JSON with every field, and the PNG.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// The glmserve to start: the one built with this test, or $GLMLOAD_TEST_GLMSERVE (another build).
const char* ServeBinary() {
  const char* env = std::getenv("GLMLOAD_TEST_GLMSERVE");
  return env != nullptr && *env != '\0' ? env : GLMSERVE_BINARY;
}
constexpr char kLoad[] = GLMLOAD_BINARY;
constexpr char kModel[] = GLMSERVE_TEST_MODEL_DIR;

// `glmserve serve` on 127.0.0.1:0; stderr collected; killed on destruction.
class ServerProcess {
 public:
  ServerProcess() {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 2);
      close(fds[0]);
      close(fds[1]);
      execl(ServeBinary(), ServeBinary(), "serve", "--model", kModel, "--host", "127.0.0.1", "--port", "0",
            static_cast<char*>(nullptr));
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
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (reader_.joinable()) reader_.join();
  }
  int WaitServing(std::chrono::seconds timeout) {
    static const std::regex re("serving on 127\\.0\\.0\\.1:([0-9]+)");
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        std::smatch m;
        if (std::regex_search(log_, m, re)) return std::stoi(m[1]);
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::lock_guard<std::mutex> lock(mu_);
        log_ += WIFSIGNALED(status) ? "[exited on signal " + std::to_string(WTERMSIG(status)) + "]\n"
                                    : "[exited " + std::to_string(WEXITSTATUS(status)) + "]\n";
        return 0;
      }
      std::this_thread::sleep_for(20ms);
    }
    return 0;
  }
  std::string log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

 private:
  pid_t pid_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::string log_;
};

// Runs a shell command (bounded by `timeout`), returns stdout; *rc gets the exit status.
std::string RunCommand(const std::string& cmd, int* rc) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "";
  std::string out;
  char buf[4096];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  const int status = pclose(p);
  *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

TEST(GlmloadRealTest, ShortSweepProducesTableJsonAndPng) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  ServerProcess server;
  const int port = server.WaitServing(120s);
  ASSERT_GT(port, 0) << ServeBinary() << " did not serve:\n" << server.log();

  const fs::path dir = fs::temp_directory_path() / ("glmload_real_test." + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string json_path = (dir / "run.json").string();
  const std::string png_path = (dir / "run.png").string();
  const std::string cmd = std::string("timeout 90 ") + kLoad + " --target 127.0.0.1:" +
                          std::to_string(port) +
                          " --sweep 1,2 --duration 2s --stream --prompt-len uniform:4:12"
                          " --max-new-tokens 6 --deadline-ms 20000 --no-progress --json-out " +
                          json_path + " --plot " + png_path + " 2>" + (dir / "stderr").string();
  int rc = -1;
  const std::string table = RunCommand(cmd, &rc);
  std::ifstream err_file(dir / "stderr");
  std::stringstream err;
  err << err_file.rdbuf();
  ASSERT_EQ(rc, 0) << table << err.str() << server.log();

  // The table: a header and one row per level.
  EXPECT_NE(table.find("lat p50"), std::string::npos) << table;
  EXPECT_NE(table.find("ttft p50"), std::string::npos) << table;
  EXPECT_NE(table.find("queue p50"), std::string::npos) << table;

  // The JSON: every number.
  std::ifstream jf(json_path);
  ASSERT_TRUE(jf.good()) << json_path;
  nlohmann::json j = nlohmann::json::parse(jf, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["percentile_method"], "nearest-rank");
  EXPECT_EQ(j["server"]["architecture"], "glm4");
  ASSERT_EQ(j["levels"].size(), 2u);
  for (const auto& l : j["levels"]) {
    for (const char* k : {"concurrency", "elapsed_s", "requests_sent", "requests_ok", "errors",
                          "requests_per_s", "generated_tokens_per_s", "latency_ms", "ttft_ms",
                          "inter_token_ms", "queue_ms"}) {
      EXPECT_TRUE(l.contains(k)) << k;
    }
    for (const char* k : {"p50", "p90", "p99", "max"}) EXPECT_TRUE(l["latency_ms"].contains(k)) << k;
    EXPECT_GT(l["requests_ok"].get<int>(), 0);
    EXPECT_TRUE(l["errors"].empty()) << l["errors"];
    EXPECT_GT(l["requests_per_s"].get<double>(), 0);
    EXPECT_EQ(l["generated_tokens"].get<int>(), 6 * l["requests_ok"].get<int>());
    EXPECT_GT(l["latency_ms"]["p50"].get<double>(), 0);
    EXPECT_GT(l["ttft_ms"]["count"].get<int>(), 0);
    EXPECT_GT(l["inter_token_ms"]["count"].get<int>(), 0);
    EXPECT_GT(l["queue_ms"]["count"].get<int>(), 0);
  }

  // The PNG.
  std::ifstream pf(png_path, std::ios::binary);
  ASSERT_TRUE(pf.good()) << png_path << ": " << err.str();
  char sig[8] = {};
  pf.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");
  EXPECT_GT(fs::file_size(png_path), 5000u);

  // Re-reporting the saved run: a markdown table.
  const std::string md = RunCommand(std::string("timeout 30 ") + kLoad + " --from-json " + json_path +
                                        "," + json_path + " --labels a,b",
                                    &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(md.find("| concurrency |"), std::string::npos) << md;
  fs::remove_all(dir);
}

}  // namespace
