// glm4v (GLM-4.1V) through the real glmserve binary: generate --image matches transformers'
// recording for images of several sizes and aspect ratios (tests/fixtures/glm4v/expected.json
// cases: ids exact, first logits within the text parity tolerance, image token counts), text-only
// generation too (text_cases), inspect shows the vision keys, broken checkpoints list every problem
// at once and exit 2, random weights build, bad --image input is refused naming the flag.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/runtime/cli_test_support.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

using glmserve::testing::Fixtures;
using glmserve::testing::Glmserve;
using glmserve::testing::Join;
using glmserve::testing::ReadJson;
using glmserve::testing::RunResult;

fs::path Glm4v() { return Fixtures() / "glm4v"; }

TEST(Glm4vCli, TextOnlyGenerateMatchesTransformers) {
  const json expected = ReadJson(Glm4v() / "expected.json");
  const std::string dir = (Glm4v() / "tiny-safetensors-sharded").string();
  ASSERT_GE(expected["text_cases"].size(), 3u);
  for (const json& c : expected["text_cases"]) {
    const std::string name = c["name"].get<std::string>();
    RunResult r = Glmserve({"generate", "--model", dir, "--input-ids", Join(c["input_ids"]), "--max-new-tokens",
                            std::to_string(c["max_new_tokens"].get<int>()), "--min-new-tokens",
                            std::to_string(c["min_new_tokens"].get<int>()), "--json"});
    ASSERT_EQ(r.exit_code, 0) << name << "\n" << r.err;
    const json out = json::parse(r.out);
    EXPECT_EQ(out["output_ids"], c["output_ids"]) << name;
    ASSERT_EQ(out["first_logits"].size(), c["first_logits"].size()) << name;
    for (size_t i = 0; i < out["first_logits"].size(); ++i) {
      const double want = c["first_logits"][i].get<double>();
      EXPECT_NEAR(out["first_logits"][i].get<double>(), want, 1e-5 + 1e-4 * std::abs(want)) << name << " [" << i << "]";
    }
  }
}

// The text tolerance plus 1e-5 of the row's largest logit: the recorded logits come from one CPU,
// and fp32 sums through the vision tower take another order under another CPU's BLAS kernels (a
// 4.6-scale row moved by up to 2.2e-5 between two Xeon machines, ids equal). The live check
// (glm4v_live_check.py) compares on the same machine.
void ExpectLogitsNear(const json& got, const json& want, const std::string& name) {
  ASSERT_EQ(got.size(), want.size()) << name;
  double scale = 0;
  for (const json& w : want) scale = std::max(scale, std::abs(w.get<double>()));
  for (size_t i = 0; i < got.size(); ++i) {
    const double w = want[i].get<double>();
    EXPECT_NEAR(got[i].get<double>(), w, 1e-5 + 1e-4 * std::abs(w) + 1e-5 * scale) << name << " [" << i << "]";
  }
}

std::vector<std::string> ImageArgs(const json& c) {
  std::vector<std::string> args;
  for (const json& image : c["images"])
    args.insert(args.end(), {"--image", (Glm4v() / image.get<std::string>()).string()});
  return args;
}

TEST(Glm4vCli, GenerateWithImagesMatchesTransformers) {
  const json expected = ReadJson(Glm4v() / "expected.json");
  const std::string dir = (Glm4v() / "tiny-safetensors-sharded").string();
  ASSERT_GE(expected["cases"].size(), 8u);
  for (const json& c : expected["cases"]) {
    const std::string name = c["name"].get<std::string>();
    std::vector<std::string> args = {"generate",
                                     "--model",
                                     dir,
                                     "--input-ids",
                                     Join(c["input_ids"]),
                                     "--max-new-tokens",
                                     std::to_string(expected["max_new_tokens"].get<int>()),
                                     "--min-new-tokens",
                                     std::to_string(expected["max_new_tokens"].get<int>()),
                                     "--json"};
    const std::vector<std::string> images = ImageArgs(c);
    args.insert(args.end(), images.begin(), images.end());
    RunResult r = Glmserve(args);
    ASSERT_EQ(r.exit_code, 0) << name << "\n" << r.err;
    const json out = json::parse(r.out);
    EXPECT_EQ(out["image_tokens"], c["image_tokens"]) << name;
    EXPECT_EQ(out["output_ids"], c["output_ids"]) << name;
    ExpectLogitsNear(out["first_logits"], c["first_logits"], name);
  }
}

TEST(Glm4vCli, BadImageInputIsRefusedNamingTheFlag) {
  const std::string dir = (Glm4v() / "tiny-safetensors-sharded").string();
  const std::string phone = (Glm4v() / "images" / "phone.png").string();
  const std::string one_image = "5,240,242,241,20";
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const fs::path not_image = fs::temp_directory_path() / ("glmserve_not_image_" + std::to_string(::getpid()));
  { std::ofstream(not_image) << "plain text, not a PNG"; }
  const std::vector<Case> cases = {
      {{"--input-ids", one_image, "--image", "/nonexistent/x.png"}, "--image /nonexistent/x.png: cannot be read"},
      {{"--input-ids", one_image, "--image", not_image.string()}, "--image " + not_image.string()},
      // Two images, one placeholder; and a placeholder outside image_start/end.
      {{"--input-ids", one_image, "--image", phone, "--image", phone}, "2 image(s)"},
      {{"--input-ids", "5,242,20", "--image", phone}, "between image_start_token_id"},
      {{"--prompt", "hi", "--image", phone}, "--image: takes --input-ids"},
      // Not files: read as serve reads a file:// image, never until memory runs out.
      {{"--input-ids", one_image, "--image", "/dev/zero"}, "--image /dev/zero: not a regular file"},
      {{"--input-ids", one_image, "--image", fs::temp_directory_path().string()}, "not a regular file"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"generate", "--model", dir, "--max-new-tokens", "2"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    RunResult r = Glmserve(args);
    EXPECT_EQ(r.exit_code, 2) << c.needle << "\n" << r.err;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << "stderr lacks '" << c.needle << "':\n" << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
  fs::remove(not_image);
  // A text model takes no images.
  RunResult text = Glmserve({"generate", "--model", (Fixtures() / "models" / "glm4-gqa-safetensors").string(),
                             "--input-ids", "1,2", "--max-new-tokens", "2", "--image", phone});
  EXPECT_EQ(text.exit_code, 2) << text.err;
  EXPECT_NE(text.err.find("takes no images"), std::string::npos) << text.err;
}

TEST(Glm4vCli, InspectShowsTheVisionKeys) {
  RunResult r =
      Glmserve({"inspect", "--model", (Glm4v() / "tiny-safetensors-sharded").string(), "--json", "--show-mapping"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json out = json::parse(r.out);
  EXPECT_EQ(out["loadable"], true);
  EXPECT_EQ(out["architecture"], "glm4v");
  EXPECT_EQ(out["format"], "safetensors-sharded");
  EXPECT_EQ(out["dtype"], "float32");
  EXPECT_EQ(out["mapping"].size(), 56u);
  const std::vector<std::string> mapping = out["mapping"].get<std::vector<std::string>>();
  for (const char* line : {"model.visual.patch_embed.proj.weight -> visual.patch_embed.weight",
                           "model.visual.blocks.1.attn.qkv.weight -> visual.blocks.1.qkv.weight",
                           "model.visual.merger.down_proj.weight -> visual.merger.down.weight",
                           "model.language_model.layers.0.mlp.gate_up_proj.weight -> layers.0.gate.weight [rows 0:96], "
                           "layers.0.up.weight [rows 96:192]"}) {
    EXPECT_NE(std::find(mapping.begin(), mapping.end(), line), mapping.end()) << line;
  }
}

TEST(Glm4vCli, BrokenCheckpointsListEveryProblemAtOnceAndExitTwo) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(Glm4v() / "broken")) {
    const json broken = ReadJson(entry.path() / "broken.json");
    for (const char* command : {"inspect", "generate"}) {
      std::vector<std::string> args = {command, "--model", entry.path().string()};
      if (std::string(command) == "generate") args.insert(args.end(), {"--input-ids", "1,2", "--max-new-tokens", "2"});
      RunResult r = Glmserve(args);
      EXPECT_EQ(r.exit_code, 2) << entry.path() << " " << command << "\n" << r.err;
      EXPECT_TRUE(r.out.empty()) << r.out;
      for (const json& needle : broken["expect_in_message"]) {
        EXPECT_NE(r.err.find(needle.get<std::string>()), std::string::npos)
            << entry.path() << " " << command << ": report lacks '" << needle.get<std::string>() << "':\n"
            << r.err;
      }
      EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
    }
    ++checked;
  }
  EXPECT_GE(checked, 1);
}

// inspect checks the image preprocessing serve builds at start: a preprocessor_config.json serve
// refuses is a problem of the checkpoint (inspect said "validation: ok").
TEST(Glm4vCli, InspectChecksThePreprocessorConfig) {
  const fs::path dir = fs::path(::testing::TempDir()) / "glmserve_glm4v_bad_preprocessor";
  fs::remove_all(dir);
  fs::copy(Glm4v() / "tiny-safetensors-sharded", dir, fs::copy_options::recursive);
  std::ofstream(dir / "preprocessor_config.json") << "{\"patch_size\": ";
  RunResult r = Glmserve({"inspect", "--model", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("preprocessor_config.json: not valid JSON"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

TEST(Glm4vCli, RandomWeightsBuildFromTheConfigAlone) {
  // Only config.json: the vision tensors get their shapes from vision_config too.
  const fs::path dir = fs::temp_directory_path() / ("glmserve_glm4v_random_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(Glm4v() / "tiny-safetensors-sharded" / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  RunResult r = Glmserve({"generate", "--model", dir.string(), "--random-weights", "--input-ids", "5,6,7",
                          "--max-new-tokens", "3", "--json"});
  fs::remove_all(dir);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["output_ids"].size(), 3u);
}

}  // namespace
