// Placeholder expansion and 3-D rotary positions against transformers' own: expected.json's
// expanded_input_ids (Glm4vProcessor) and rope_positions / rope_delta (Glm4vModel.get_rope_index)
// for every fixture case (tests/fixtures/glm4v, scripts/make_glm4v_fixtures.py).
#include "runtime/vision/multimodal_prompt.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace glmserve::vision {
namespace {

using json = nlohmann::json;

json Expected() {
  std::ifstream in(std::string(GLMSERVE_FIXTURES_DIR) + "/glm4v/expected.json");
  return json::parse(in);
}

// Images with the case's grids (the positions need no pixels).
std::vector<ImageInput> ImagesOf(const json& c, int merge) {
  std::vector<ImageInput> images;
  for (const json& grid : c["image_grid_thw"]) {
    ImageInput image;
    image.grid_t = grid[0].get<int>();
    image.grid_h = grid[1].get<int>();
    image.grid_w = grid[2].get<int>();
    image.num_tokens = image.grid_t * image.grid_h * image.grid_w / (merge * merge);
    images.push_back(image);
  }
  return images;
}

TEST(MultimodalPrompt, ExpansionAndPositionsEqualTransformers) {
  const json expected = Expected();
  const ImageTokenIds ids{expected["image_token_id"].get<int>(), expected["image_start_token_id"].get<int>(),
                          expected["image_end_token_id"].get<int>()};
  ASSERT_GE(expected["cases"].size(), 8u);
  for (const json& c : expected["cases"]) {
    const std::string name = c["name"].get<std::string>();
    std::vector<ImageInput> images = ImagesOf(c, 2);
    absl::StatusOr<std::vector<int32_t>> expanded =
        ExpandImageTokens(c["input_ids"].get<std::vector<int32_t>>(), images, ids);
    ASSERT_TRUE(expanded.ok()) << name << ": " << expanded.status();
    EXPECT_EQ(*expanded, c["expanded_input_ids"].get<std::vector<int32_t>>()) << name;
    absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> prompt =
        BuildMultimodalPrompt(*expanded, std::move(images), ids.image_token_id, 2);
    ASSERT_TRUE(prompt.ok()) << name << ": " << prompt.status();
    const MultimodalPrompt& p = **prompt;
    EXPECT_EQ(p.rope_delta, c["rope_delta"].get<int>()) << name;
    const json& rope = c["rope_positions"];
    ASSERT_EQ(p.prompt_len, static_cast<int32_t>(rope[0].size())) << name;
    for (int component = 0; component < 3; ++component) {
      for (int32_t i = 0; i < p.prompt_len; ++i) {
        ASSERT_EQ(p.Position(component, i), rope[component][i].get<int64_t>())
            << name << " component " << component << " token " << i;
      }
    }
    // Past the prompt: index + delta in all three, so decode rotates in 1-D.
    EXPECT_TRUE(p.IsPlain(p.prompt_len));
    EXPECT_EQ(p.Position(2, p.prompt_len + 3), p.prompt_len + 3 + p.rope_delta);
    ASSERT_EQ(p.image_offsets.size(), c["image_tokens"].size());
    EXPECT_EQ(c["expanded_input_ids"][p.image_offsets[0] - 1].get<int>(), ids.image_start_token_id) << name;
  }
}

TEST(MultimodalPrompt, MismatchesAreRefusedNamingTheIndex) {
  const ImageTokenIds ids{42, 40, 41};
  ImageInput image;
  image.grid_h = 4;
  image.grid_w = 6;
  image.num_tokens = 6;
  // More placeholders than images, fewer, and a placeholder outside start/end.
  EXPECT_NE(ExpandImageTokens({1, 40, 42, 41, 40, 42, 41}, {image}, ids).status().message().find("input_ids[5]"),
            std::string::npos);
  EXPECT_NE(ExpandImageTokens({1, 2}, {image}, ids).status().message().find("0 image placeholder(s)"),
            std::string::npos);
  EXPECT_NE(ExpandImageTokens({1, 42, 41}, {image}, ids).status().message().find("input_ids[1]"), std::string::npos);
  // A run of image tokens of the wrong length for its image.
  absl::StatusOr<std::shared_ptr<const MultimodalPrompt>> wrong =
      BuildMultimodalPrompt({1, 40, 42, 42, 41}, {image}, 42, 2);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("takes 6"), std::string::npos) << wrong.status();
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace glmserve::vision
