#include "runtime/checkpoint/model_config.h"

#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

class ModelConfigTest : public glmserve::testing::ScratchDirTest {
 protected:
  absl::StatusOr<ModelConfig> Load() { return LoadModelConfig(dir_.string()); }
};

TEST_F(ModelConfigTest, GlmRopeParametersGiveThetaAndPartialRotary) {
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 12,
    "vocab_size": 160, "max_position_embeddings": 64,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 0.5}})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kGlm4);
  EXPECT_TRUE(c->sandwich_norms);
  EXPECT_EQ(c->head_dim, 12);
  EXPECT_EQ(c->rotary_dim, 6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->num_key_value_heads, 2);
  // GlmConfig's defaults: attention_bias true, eos [151329, 151336, 151338].
  EXPECT_TRUE(c->attention_bias);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{151329, 151336, 151338}));
}

TEST_F(ModelConfigTest, LegacyTopLevelRopeAndTransformersHeadDimDefault) {
  Write("config.json", R"({"model_type": "glm", "hidden_size": 32, "num_attention_heads": 4,
    "rope_theta": 20000, "partial_rotary_factor": 1.0, "eos_token_id": 5})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->sandwich_norms);
  EXPECT_EQ(c->head_dim, 128);  // GlmConfig.head_dim defaults to 128, not hidden/heads
  EXPECT_EQ(c->rotary_dim, 128);
  EXPECT_DOUBLE_EQ(c->rope_theta, 20000.0);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{5}));
}

TEST_F(ModelConfigTest, EosIdsAreTheUnionOfBothFiles) {
  Write("config.json", R"({"model_type": "glm", "eos_token_id": 5})");
  Write("generation_config.json", R"({"eos_token_id": [7, 9]})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{7, 9, 5}));
}

TEST_F(ModelConfigTest, OriginalChatGlmFields) {
  Write("config.json", R"({"model_type": "chatglm", "num_layers": 2, "padded_vocab_size": 160,
    "hidden_size": 32, "ffn_hidden_size": 64, "kv_channels": 8, "num_attention_heads": 4,
    "seq_length": 64, "layernorm_epsilon": 1e-5, "multi_query_attention": true,
    "multi_query_group_num": 2, "add_qkv_bias": true, "rope_ratio": 500, "eos_token_id": [3, 4]})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kChatGLM);
  EXPECT_EQ(c->vocab_size, 160);
  EXPECT_EQ(c->intermediate_size, 64);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->rotary_dim, 4);  // half of kv_channels
  EXPECT_DOUBLE_EQ(c->rope_theta, 5000000.0);
  EXPECT_EQ(c->max_position_embeddings, 64);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{3, 4}));
}

TEST_F(ModelConfigTest, ChatGlmWithoutMultiQueryUsesAllHeads) {
  Write("config.json", R"({"model_type": "chatglm", "num_attention_heads": 4, "multi_query_group_num": 2})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 4);
}

TEST_F(ModelConfigTest, InvalidJsonNamesFileAndPosition) {
  Write("config.json", R"({"model_type": "glm", )");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(c.status().message().find("config.json: invalid JSON at byte"), std::string::npos) << c.status();
}

TEST_F(ModelConfigTest, EveryBadFieldIsReportedAtOnce) {
  Write("config.json", R"({"model_type": "glm", "hidden_size": "large", "num_hidden_layers": -1,
    "rope_parameters": {"rope_type": "yarn"}, "num_attention_heads": 4, "num_key_value_heads": 3})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  const std::string message(c.status().message());
  EXPECT_NE(message.find("field 'hidden_size': expected an integer, found string"), std::string::npos) << message;
  EXPECT_NE(message.find("field 'num_hidden_layers': expected a positive integer, found -1"), std::string::npos)
      << message;
  EXPECT_NE(message.find("'yarn' is not supported"), std::string::npos) << message;
  EXPECT_NE(message.find("field 'num_key_value_heads': 3 does not divide num_attention_heads 4"), std::string::npos)
      << message;
}

// Values a reader could not take as they are: refused naming the field and the value, never a
// crash (a wrong JSON type, a number past a double, an integer past 32 bits taken modulo 2^32) or
// unbounded work (20 million layers, a 4096-patch side, a config that is /dev/zero).
TEST_F(ModelConfigTest, ValuesNoReaderCanTakeAreRefusedNamingTheField) {
  const std::string base = R"("hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2)";
  const struct {
    std::string config;
    std::string says;
  } cases[] = {
      {R"({"model_type": 4, "architectures": ["GlmForCausalLM"], )" + base + "}",
       "field 'model_type': expected a string, found number"},
      {R"({"model_type": "glm", "rope_scaling": {"type": 1}, )" + base + "}",
       "rope_scaling: field 'type': expected a string, found number"},
      {R"({"model_type": "glm", "rope_theta": 1e400, )" + base + "}", "config.json: invalid JSON: number overflow"},
      {R"({"model_type": "glm", "vocab_size": 4294968320, )" + base + "}",
       "field 'vocab_size': 4294968320 is outside the 32-bit integer range"},
      {R"({"model_type": "glm", "eos_token_id": [5, 1099511627776], )" + base + "}",
       "field 'eos_token_id': expected an integer or a list of 32-bit integers, found element 1099511627776"},
      {R"({"model_type": "glm", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 20000000})",
       "field 'num_hidden_layers': 20000000 is implausibly large (at most 1024)"},
  };
  for (const auto& c : cases) {
    Write("config.json", c.config);
    auto loaded = Load();
    ASSERT_FALSE(loaded.ok()) << c.config;
    EXPECT_NE(loaded.status().message().find(c.says), std::string::npos) << loaded.status();
  }
  fs::remove(dir_ / "config.json");
  fs::create_symlink("/dev/zero", dir_ / "config.json");
  auto device = Load();
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.status().message().find("config.json: not a regular file"), std::string::npos) << device.status();
}

TEST_F(ModelConfigTest, NonGlmModelTypeIsRefusedByName) {
  Write("config.json", R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'llama' is not a GLM model"), std::string::npos) << c.status();
}

TEST_F(ModelConfigTest, MissingConfigAndMissingDirectory) {
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("config.json: missing"), std::string::npos);
  auto d = LoadModelConfig((dir_ / "nope").string());
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace glmserve
