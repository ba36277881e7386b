// The glmload binary against the real `glmserve serve` binary on the bundled tiny model (loopback,
// --port 0): a short streamed sweep produces the table, the JSON with every field, and the PNG;
// a short --http --stream run through the OpenAI HTTP API (--http-port 0) measures TTFT and ITL.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/testutil/server_process.h"

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

using glmserve::testing::RunCommand;
using glmserve::testing::ServerProcess;

// A loopback TCP port nobody listens on right now (the kernel's pick for port 0); 0 on failure.
int FreeLoopbackPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// One glmload run in a scratch directory of its own: `args` after the binary (`--json-out` added), its
// exit status, stdout (the table), stderr and the JSON it wrote (discarded when it wrote none).
struct GlmloadRun {
  fs::path dir;
  int rc = -1;
  std::string table, err;
  nlohmann::json json;
};
GlmloadRun RunGlmload(const std::string& name, const std::string& args) {
  GlmloadRun run;
  run.dir = fs::temp_directory_path() / (name + "." + std::to_string(getpid()));
  fs::create_directories(run.dir);
  const std::string cmd = std::string("timeout 90 ") + kLoad + " " + args + " --no-progress --json-out " +
                          (run.dir / "run.json").string() + " 2>" + (run.dir / "stderr").string();
  run.table = RunCommand(cmd, &run.rc);
  std::stringstream err;
  err << std::ifstream(run.dir / "stderr").rdbuf();
  run.err = err.str();
  std::ifstream jf(run.dir / "run.json");
  run.json = nlohmann::json::parse(jf, nullptr, /*allow_exceptions=*/false);
  return run;
}

TEST(GlmloadRealTest, ShortSweepProducesTableJsonAndPng) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  ServerProcess server(ServeBinary(), kModel);
  const int port = server.WaitServing(120s);
  ASSERT_GT(port, 0) << ServeBinary() << " did not serve:\n" << server.log();

  const fs::path png_path = fs::temp_directory_path() / ("glmload_real_test.png." + std::to_string(getpid()));
  GlmloadRun run = RunGlmload("glmload_real_test", "--target 127.0.0.1:" + std::to_string(port) +
                                                       " --sweep 1,2 --duration 2s --stream --prompt-len uniform:4:12"
                                                       " --max-new-tokens 6 --deadline-ms 20000 --plot " +
                                                       png_path.string());
  const std::string& table = run.table;
  ASSERT_EQ(run.rc, 0) << table << run.err << server.log();

  // The table: a header and one row per level.
  EXPECT_NE(table.find("lat p50"), std::string::npos) << table;
  EXPECT_NE(table.find("ttft p50"), std::string::npos) << table;
  EXPECT_NE(table.find("queue p50"), std::string::npos) << table;

  // The JSON: every number.
  const nlohmann::json& j = run.json;
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["percentile_method"], "nearest-rank");
  EXPECT_EQ(j["server"]["architecture"], "glm4");
  ASSERT_EQ(j["levels"].size(), 2u);
  for (const auto& l : j["levels"]) {
    for (const char* k : {"concurrency", "elapsed_s", "requests_sent", "requests_ok", "errors", "requests_per_s",
                          "generated_tokens_per_s", "steady_generated_tokens_per_s", "steady_window_s", "latency_ms",
                          "ttft_ms", "inter_token_ms", "queue_ms"}) {
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
  ASSERT_TRUE(pf.good()) << png_path << ": " << run.err;
  char sig[8] = {};
  pf.read(sig, 8);
  EXPECT_EQ(std::string(sig + 1, 3), "PNG");
  EXPECT_GT(fs::file_size(png_path), 5000u);

  // Re-reporting the saved run: a markdown table.
  const std::string json_path = (run.dir / "run.json").string();
  int rc = -1;
  const std::string md = RunCommand(
      std::string("timeout 30 ") + kLoad + " --from-json " + json_path + "," + json_path + " --labels a,b", &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(md.find("| concurrency |"), std::string::npos) << md;
  fs::remove_all(run.dir);
  fs::remove(png_path);
}

// --http: the same harness through the OpenAI HTTP API (POST /v1/completions, SSE stream), with
// sampling flags and penalties in every request; TTFT and inter-token latency measured.
// Against a server run as the Kubernetes overlays run it, with API keys and TLS: glmload's
// --api-key and --tls-ca / --tls-server-name (a certificate naming only the Service, reached over
// 127.0.0.1 as through a port-forward). Without the key the run fails and says why: GetModelInfo's
// UNAUTHENTICATED (it said only "GetModelInfo failed"). TLS needs the openssl command.
TEST(GlmloadRealTest, ApiKeyAndTls) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  const fs::path dir = fs::temp_directory_path() / ("glmload_auth_test." + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "keys") << "# glmload test\nglmload-test-key-1\n";
  std::vector<std::string> flags = {"--api-key-file", (dir / "keys").string()};
  int rc = -1;
  RunCommand("command -v openssl >/dev/null", &rc);
  const bool tls = rc == 0;
  if (tls) {
    const std::string d = dir.string();
    const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
    RunCommand("cd " + d + " && openssl req -x509" + ec + "-keyout ca.key -out ca.crt -days 2 -subj '/CN=test CA' " +
                   "2>/dev/null && printf 'subjectAltName=DNS:glmserve.test\\nextendedKeyUsage=serverAuth\\n' > "
                   "server.ext && openssl req" +
                   ec +
                   "-keyout server.key -out server.csr -subj /CN=server 2>/dev/null "
                   "&& openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt "
                   "-days 2 -extfile server.ext 2>/dev/null",
               &rc);
    ASSERT_EQ(rc, 0) << "openssl could not make the test certificates";
    flags.insert(flags.end(), {"--tls-cert", d + "/server.crt", "--tls-key", d + "/server.key"});
  }
  ServerProcess server(ServeBinary(), kModel, flags);
  const int port = server.WaitServing(120s);
  ASSERT_GT(port, 0) << ServeBinary() << " did not serve:\n" << server.log();
  const std::string target = "--target 127.0.0.1:" + std::to_string(port);
  const std::string tls_flags =
      tls ? " --tls-ca " + (dir / "ca.crt").string() + " --tls-server-name glmserve.test" : std::string();
  const std::string load = " --concurrency 2 --requests 6 --prompt-len 4 --max-new-tokens 2 --deadline-ms 20000";

  GlmloadRun run = RunGlmload("glmload_auth_ok", target + " --api-key glmload-test-key-1" + tls_flags + load);
  ASSERT_EQ(run.rc, 0) << run.table << run.err << server.log();
  ASSERT_FALSE(run.json.is_discarded());
  EXPECT_EQ(run.json["levels"][0]["requests_ok"].get<int>(), 6) << run.json.dump();

  GlmloadRun keyless = RunGlmload("glmload_auth_none", target + " --api-key ''" + tls_flags + load);
  EXPECT_NE(keyless.rc, 0) << keyless.table << keyless.err;
  EXPECT_NE(keyless.err.find("UNAUTHENTICATED"), std::string::npos) << keyless.err;
  fs::remove_all(run.dir);
  fs::remove_all(keyless.dir);
  fs::remove_all(dir);
}

TEST(GlmloadRealTest, HttpStreamRun) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  ServerProcess server(ServeBinary(), kModel, {"--http-port", "0"});
  ASSERT_GT(server.WaitServing(120s), 0) << ServeBinary() << " did not serve:\n" << server.log();
  int http_port = 0;
  {
    static const std::regex re("http serving on 127\\.0\\.0\\.1:([0-9]+)");
    const auto end = std::chrono::steady_clock::now() + 30s;
    while (http_port == 0 && std::chrono::steady_clock::now() < end) {
      std::smatch m;
      const std::string log = server.log();
      if (std::regex_search(log, m, re))
        http_port = std::stoi(m[1]);
      else
        std::this_thread::sleep_for(20ms);
    }
  }
  ASSERT_GT(http_port, 0) << "no 'http serving on' line:\n" << server.log();

  // The tiny model's vocabulary is 1024 ids.
  GlmloadRun run =
      RunGlmload("glmload_http_test", "--http --target 127.0.0.1:" + std::to_string(http_port) +
                                          " --concurrency 3 --duration 2s --stream --prompt-len uniform:4:12"
                                          " --max-new-tokens 6 --vocab-size 1024 --temperature 0.7 --top-p 0.85"
                                          " --frequency-penalty 0.2 --presence-penalty 0.1 --repetition-penalty 1.1"
                                          " --deadline-ms 20000");
  const std::string& table = run.table;
  ASSERT_EQ(run.rc, 0) << table << run.err << server.log();
  EXPECT_NE(table.find("POST /v1/completions (SSE stream)"), std::string::npos) << table;
  EXPECT_NE(table.find("itl p50"), std::string::npos) << table;

  const nlohmann::json& j = run.json;
  ASSERT_FALSE(j.is_discarded());
  EXPECT_EQ(j["config"]["api"], "http");
  EXPECT_FLOAT_EQ(j["config"]["top_p"].get<float>(), 0.85f);
  EXPECT_FLOAT_EQ(j["config"]["frequency_penalty"].get<float>(), 0.2f);
  EXPECT_FLOAT_EQ(j["config"]["repetition_penalty"].get<float>(), 1.1f);
  ASSERT_EQ(j["levels"].size(), 1u);
  const auto& l = j["levels"][0];
  EXPECT_GT(l["requests_ok"].get<int>(), 0);
  EXPECT_TRUE(l["errors"].empty()) << l["errors"];
  // --ignore-eos (default true) sends min_tokens = max_tokens: exactly 6 new tokens each.
  EXPECT_EQ(l["generated_tokens"].get<int>(), 6 * l["requests_ok"].get<int>());
  EXPECT_GT(l["generated_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(l["latency_ms"]["p50"].get<double>(), 0);
  EXPECT_GT(l["ttft_ms"]["count"].get<int>(), 0);
  EXPECT_GT(l["ttft_ms"]["p50"].get<double>(), 0);
  // A gap before each id after the first: every step's chunk counted with its ids, also those
  // whose text the server holds back (the tiny model's random ids are often partial UTF-8).
  EXPECT_EQ(l["inter_token_ms"]["count"].get<int>(), 5 * l["requests_ok"].get<int>());
  EXPECT_LE(l["ttft_ms"]["p50"].get<double>(), l["latency_ms"]["p50"].get<double>());

  // The requests went through the HTTP front end (its request log names the route).
  EXPECT_NE(server.log().find("/v1/completions"), std::string::npos);
  fs::remove_all(run.dir);
}

// --metrics-target: each level's steady window as the server saw it (two /metrics scrapes of
// serve --metrics-port): its steps, mean batch and ms a step by phase. The server sleeps 3 ms a
// step in the executor's place (--debug-step-latency-ms), and runs on a CPU (no device wait).
TEST(GlmloadRealTest, MetricsTargetRecordsTheServersWindow) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  const int metrics_port = FreeLoopbackPort();
  ASSERT_GT(metrics_port, 0);
  ServerProcess server(ServeBinary(), kModel,
                       {"--metrics-port", std::to_string(metrics_port), "--debug-step-latency-ms", "3"});
  const int port = server.WaitServing(120s);
  ASSERT_GT(port, 0) << ServeBinary() << " did not serve:\n" << server.log();

  GlmloadRun run =
      RunGlmload("glmload_metrics_test", "--target 127.0.0.1:" + std::to_string(port) +
                                             " --metrics-target 127.0.0.1:" + std::to_string(metrics_port) +
                                             " --concurrency 3 --duration 2s --warmup 0.5s --stream --prompt-len 8"
                                             " --max-new-tokens 6 --deadline-ms 20000");
  const std::string& table = run.table;
  ASSERT_EQ(run.rc, 0) << table << run.err << server.log();
  EXPECT_NE(table.find("server, conc 3: "), std::string::npos) << table;

  const nlohmann::json& j = run.json;
  ASSERT_FALSE(j.is_discarded());
  ASSERT_EQ(j["levels"].size(), 1u);
  const auto& w = j["levels"][0]["server_window"];
  ASSERT_TRUE(w.is_object()) << j["levels"][0];
  // 1.5 s of steps of at least 3 ms each: at most 500, and some.
  EXPECT_GT(w["steps"].get<int>(), 10) << w;
  EXPECT_LE(w["steps"].get<int>(), 500) << w;
  EXPECT_GT(w["mean_batch"].get<double>(), 1.0) << w;
  EXPECT_LE(w["mean_batch"].get<double>(), 3.0) << w;
  EXPECT_GE(w["step_ms"]["executor_host"].get<double>(), 3.0) << w;
  EXPECT_EQ(w["step_ms"]["device_wait"].get<double>(), 0.0) << w;
  for (const char* phase : {"schedule", "commit"}) {
    EXPECT_GT(w["step_ms"][phase].get<double>(), 0.0) << phase << " " << w;
    EXPECT_LT(w["step_ms"][phase].get<double>(), 3.0) << phase << " " << w;
  }
  fs::remove_all(run.dir);
}

// An open-loop level whose arrivals are dropped fails the run: the server (each step held 50 ms) takes
// ~0.5 s a request, so at 100 requests/s with at most 2 in flight nearly every arrival is dropped, and
// the latencies measured are not those of that rate.
TEST(GlmloadRealTest, DroppedArrivalsFailTheRun) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  ServerProcess server(ServeBinary(), kModel, {"--debug-step-latency-ms", "50"});
  const int port = server.WaitServing(120s);
  ASSERT_GT(port, 0) << ServeBinary() << " did not serve:\n" << server.log();
  GlmloadRun run = RunGlmload("glmload_drop_test", "--target 127.0.0.1:" + std::to_string(port) +
                                                       " --rate 100 --max-in-flight 2 --duration 1s --prompt-len 4"
                                                       " --max-new-tokens 8 --deadline-ms 20000");
  EXPECT_EQ(run.rc, 1) << run.table << run.err;
  EXPECT_NE(run.err.find("dropped"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("--max-in-flight 2"), std::string::npos) << run.err;
  ASSERT_FALSE(run.json.is_discarded());
  const auto& level = run.json["levels"][0];
  EXPECT_GT(level["requests_dropped"].get<int>(), 0) << level;
  EXPECT_TRUE(level["errors"].empty()) << level;  // what ran, ran well: the drops alone fail it
  fs::remove_all(run.dir);

  // The same server at a rate it keeps up with: nothing dropped, exit 0.
  GlmloadRun kept = RunGlmload("glmload_kept_test", "--target 127.0.0.1:" + std::to_string(port) +
                                                        " --rate 4 --max-in-flight 64 --duration 1s --prompt-len 4"
                                                        " --max-new-tokens 8 --deadline-ms 20000");
  EXPECT_EQ(kept.rc, 0) << kept.table << kept.err;
  ASSERT_FALSE(kept.json.is_discarded());
  EXPECT_EQ(kept.json["levels"][0]["requests_dropped"].get<int>(), 0) << kept.json["levels"][0];
  fs::remove_all(kept.dir);
}

}  // namespace
