// Tokenizer throughput: encode and decode tokens/s on the fixture corpus, per format.
//   build-tok/bench/tokenizer_bench [--repeat N] [DIR...]
// Default dirs: models/glm4-tiny and tests/fixtures/tokenizer/{glm4-hf,glm4-tiktoken,chatglm3-sp}.
// Each corpus line is encoded on its own (as requests are), single thread. Compare with
// bench/hf_tokenizer_bench.py (HF tokenizers / tiktoken / sentencepiece on the same lines).
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "flags/flags.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/tokenizer.h"

#ifndef GLMSERVE_SOURCE_DIR
#define GLMSERVE_SOURCE_DIR "."
#endif

int main(int argc, char** argv) {
  using Clock = std::chrono::steady_clock;
  int repeat = 200;
  std::vector<std::string> dirs;
  glmserve::flags::FlagSet flags("tokenizer_bench", "[--repeat N] [DIR...]",
                                 "Tokenizer throughput: encode and decode tokens/s on the fixture corpus, per format.");
  flags.Int("repeat", &repeat, 1, 1 << 20, "passes over the corpus");
  flags.Positional("DIR...", &dirs,
                   "model or tokenizer directories (default: models/glm4-tiny and the tokenizer fixtures)");
  if (std::optional<int> exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  const std::string root = GLMSERVE_SOURCE_DIR;
  if (dirs.empty()) {
    dirs = {root + "/models/glm4-tiny", root + "/tests/fixtures/tokenizer/glm4-hf",
            root + "/tests/fixtures/tokenizer/glm4-tiktoken", root + "/tests/fixtures/tokenizer/chatglm3-sp"};
  }
  std::ifstream f(root + "/tests/fixtures/tokenizer/corpus.json");
  std::stringstream ss;
  ss << f.rdbuf();
  const auto lines = nlohmann::json::parse(ss.str()).get<std::vector<std::string>>();
  size_t bytes = 0;
  for (const auto& l : lines) bytes += l.size();
  std::printf("corpus: %zu lines, %zu bytes, x%d repeats, one line per call, 1 thread\n", lines.size(), bytes, repeat);
  std::printf("%-58s %-15s %12s %14s %14s\n", "dir", "format", "tokens", "encode tok/s", "decode tok/s");
  for (const std::string& dir : dirs) {
    auto tok = glmserve::tokenizer::Tokenizer::FromDirectory(dir);
    if (!tok.ok()) {
      std::fprintf(stderr, "%s: %s\n", dir.c_str(), std::string(tok.status().message()).c_str());
      return 1;
    }
    std::vector<std::vector<int32_t>> encoded(lines.size());
    size_t tokens = 0;
    auto t0 = Clock::now();
    for (int r = 0; r < repeat; ++r) {
      for (size_t i = 0; i < lines.size(); ++i) encoded[i] = (*tok)->Encode(lines[i], false);
    }
    const double enc_s = std::chrono::duration<double>(Clock::now() - t0).count();
    for (const auto& e : encoded) tokens += e.size();
    size_t sink = 0;
    t0 = Clock::now();
    for (int r = 0; r < repeat; ++r) {
      for (const auto& e : encoded) sink += (*tok)->Decode(e).size();
    }
    const double dec_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sink != bytes * repeat) std::fprintf(stderr, "warning: decode size %zu != %zu\n", sink, bytes * repeat);
    const double total = static_cast<double>(tokens) * repeat;
    std::printf("%-58s %-15s %12.0f %14.0f %14.0f\n", dir.c_str(), (*tok)->format().c_str(), total, total / enc_s,
                total / dec_s);
  }
  return 0;
}
