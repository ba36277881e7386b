// Status codes from the loader reach the caller unchanged (ModelRunner::Load), and GenerateOnce
// refuses with the engine's own checks: no code is flattened to INTERNAL on the way.
#include "runtime/model_runner.h"

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/generate_once.h"
#include "tests/testutil/fixture_models.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

fs::path Broken(const std::string& name) { return fs::path(GLMSERVE_FIXTURES_DIR) / "broken" / name; }

TEST(ModelRunnerLoad, MissingWeightFilesAreNotFoundWithTheWholeReport) {
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(Broken("no-weights").string(), {});
  ASSERT_FALSE(runner.ok());
  EXPECT_EQ(runner.status().code(), absl::StatusCode::kNotFound) << runner.status();
  EXPECT_NE(runner.status().message().find("no weight files"), absl::string_view::npos) << runner.status();
  EXPECT_NE(runner.status().message().find("cannot be loaded"), absl::string_view::npos) << runner.status();
}

TEST(ModelRunnerLoad, MissingDirectoryIsNotFoundAndMissingConfigFailedPrecondition) {
  EXPECT_EQ(ModelRunner::Load("/nonexistent/glmserve/model", {}).status().code(), absl::StatusCode::kNotFound);
  LoadOptions random;
  random.random_weights = true;
  EXPECT_EQ(ModelRunner::Load("/nonexistent/glmserve/model", random).status().code(), absl::StatusCode::kNotFound);
  // A directory without config.json is not a checkpoint (LoadModelConfig's contract).
  const fs::path empty = fs::temp_directory_path() / "glmserve_model_runner_test_empty";
  fs::create_directories(empty);
  EXPECT_EQ(ModelRunner::Load(empty.string(), random).status().code(), absl::StatusCode::kFailedPrecondition);
  fs::remove_all(empty);
}

TEST(ModelRunnerLoad, InvalidCheckpointIsFailedPrecondition) {
  for (const char* name : {"shape-mismatch", "missing-key", "truncated-safetensors", "config-vocab-mismatch"}) {
    absl::StatusOr<std::unique_ptr<ModelRunner>> runner = ModelRunner::Load(Broken(name).string(), {});
    ASSERT_FALSE(runner.ok()) << name;
    EXPECT_EQ(runner.status().code(), absl::StatusCode::kFailedPrecondition) << name << ": " << runner.status();
  }
}

TEST(ModelRunnerLoad, BadOptionsAreInvalidArgument) {
  LoadOptions options;
  options.dtype = "float8";
  const std::string model = testing::FixtureModelDir("glm4-gqa-safetensors").string();
  EXPECT_EQ(ModelRunner::Load(model, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(GenerateOnce, RefusalsAreTheEnginesNamingTheField) {
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Load(testing::FixtureModelDir("glm4-gqa-safetensors").string(), {});
  ASSERT_TRUE(runner.ok()) << runner.status();
  GenerationParams params;
  params.max_new_tokens = 4;
  absl::StatusOr<GenerationOutput> empty = GenerateOnce(**runner, {}, params);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("input_ids"), absl::string_view::npos) << empty.status();
  params.max_new_tokens = 0;
  absl::StatusOr<GenerationOutput> none = GenerateOnce(**runner, {1, 2}, params);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("max_new_tokens"), absl::string_view::npos) << none.status();
  params.max_new_tokens = 3;
  params.min_new_tokens = 3;  // no early eos
  absl::StatusOr<GenerationOutput> out = GenerateOnce(**runner, {1, 2, 3}, params);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->output_ids.size(), 3u);
  EXPECT_EQ(static_cast<int32_t>(out->first_logits.size()), (*runner)->info().vocab_size);
}

}  // namespace
}  // namespace glmserve
