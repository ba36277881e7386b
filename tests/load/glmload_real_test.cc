// The glmload binary against the real `glmserve serve` binary on the bundled tiny model (loopback,
// --port 0): a short streamed sweep produces the table, the JSON with every field, and the PNG.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

TEST(GlmloadRealTest, ShortSweepProducesTableJsonAndPng) {
  if (!fs::exists(std::string(kModel) + "/config.json")) GTEST_SKIP() << "no model at " << kModel;
  ServerProcess server(ServeBinary(), kModel);
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
