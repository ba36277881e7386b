#include "runtime/checkpoint/model_config.h"

#include <algorithm>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
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
  // GlmConfig's defaults: attention_bias true, eos [151329, 151336, 151338], here none of them
  // (outside a vocabulary of 160).
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->eos_token_ids.empty());
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

// eos ids outside the vocabulary were accepted ("eos ids: 3,67,-1"), and null or absent ids pulled
// in GLM-4's defaults even where the vocabulary does not reach them.
TEST_F(ModelConfigTest, EosIdsOutsideTheVocabularyAreRefusedNamingFileAndField) {
  const std::string sizes = R"("hidden_size": 32, "num_attention_heads": 4, "vocab_size": 160)";
  Write("config.json", R"({"model_type": "glm4", "eos_token_id": [3, -1, 160], )" + sizes + "}");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("config.json: field 'eos_token_id': -1, 160 are outside the vocabulary "
                                      "(vocab_size 160); expected token ids in [0, 160)"),
            std::string::npos)
      << c.status();
  Write("config.json", R"({"model_type": "glm4", "eos_token_id": 3, )" + sizes + "}");
  Write("generation_config.json", R"({"eos_token_id": [99999999, 5]})");
  c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("generation_config.json: field 'eos_token_id': 99999999 is outside the "
                                      "vocabulary (config.json vocab_size 160)"),
            std::string::npos)
      << c.status();
  fs::remove(dir_ / "generation_config.json");
  // null: none (transformers keeps the None); absent: GlmConfig's default ids inside the vocabulary.
  Write("config.json", R"({"model_type": "glm4", "eos_token_id": null, )" + sizes + "}");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->eos_token_ids.empty());
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 151330})");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{151329}));
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "num_attention_heads": 4})");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{151329, 151336, 151338}));
  // chatglm names its vocabulary padded_vocab_size.
  Write("config.json", R"({"model_type": "chatglm", "padded_vocab_size": 100, "eos_token_id": 100})");
  c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("field 'eos_token_id': 100 is outside the vocabulary (padded_vocab_size 100)"),
            std::string::npos)
      << c.status();
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

// The parser's reason, not "expected a JSON object" whatever the fault.
TEST_F(ModelConfigTest, InvalidJsonSaysWhatIsWrong) {
  // (lowercase: Python's NaN is taken, PythonNanAndInfinityLoadWhereUnused)
  Write("config.json", R"({"model_type": "glm", "rms_norm_eps": nan})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  std::string message(c.status().message());
  EXPECT_NE(message.find("config.json: invalid JSON at byte 40 (line 1, column 40): syntax error while parsing value"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("invalid literal"), std::string::npos) << message;
  EXPECT_EQ(message.find("expected a JSON object"), std::string::npos) << message;
  EXPECT_EQ(message.find("json.exception"), std::string::npos) << message;
  Write("config.json", R"({"model_type": "glm", "hidden_size": 32, "num_attention_heads": 4})");
  Write("generation_config.json", "{\"eos_token_id\": 5,}");
  c = Load();
  ASSERT_FALSE(c.ok());
  message = std::string(c.status().message());
  EXPECT_NE(message.find("generation_config.json: invalid JSON at byte 20 (line 1, column 20): syntax error while "
                         "parsing object key"),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find("expected a JSON object"), std::string::npos) << message;
  // The parser quotes what it read: a stray byte is shown escaped, so the message stays UTF-8 (it
  // made `inspect --json` abort: the JSON writer throws on it).
  Write("config.json", "{\"model_type\": \"glm\", \"x\": \"\xff\"}");
  c = Load();
  ASSERT_FALSE(c.ok());
  message = std::string(c.status().message());
  EXPECT_NE(message.find("ill-formed UTF-8 byte; last read: '\"\\xff'"), std::string::npos) << message;
  EXPECT_NO_THROW((void)nlohmann::json(message).dump()) << message;
}

// A size given as null is refused by name (it silently took the default 4096); absent, it takes
// transformers' default, which the config lists.
TEST_F(ModelConfigTest, NullSizeIsRefusedAndAbsentOnesAreListed) {
  Write("config.json", R"({"model_type": "glm4", "hidden_size": null, "num_attention_heads": 4, "vocab_size": 160})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("config.json: field 'hidden_size': expected a positive integer, found null"),
            std::string::npos)
      << c.status();
  Write("config.json", R"({"model_type": "glm4", "num_attention_heads": 4, "vocab_size": 160})");
  c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_NE(std::find(c->defaulted_sizes.begin(), c->defaulted_sizes.end(), "hidden_size (default 4096)"),
            c->defaulted_sizes.end());
  EXPECT_EQ(std::find(c->defaulted_sizes.begin(), c->defaulted_sizes.end(), "vocab_size (default 151552)"),
            c->defaulted_sizes.end());
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
      {R"({"model_type": "glm", "rope_scaling": [1, 2], )" + base + "}",
       "field 'rope_scaling': expected an object ({\"rope_type\": \"default\", ...}), found array"},
      {R"({"model_type": "glm", "rope_theta": 1e400, )" + base + "}", "config.json: invalid JSON: number overflow"},
      {R"({"model_type": "glm", "vocab_size": 4294968320, )" + base + "}",
       "field 'vocab_size': 4294968320 is outside the 32-bit integer range"},
      {R"({"model_type": "glm", "eos_token_id": [5, 1099511627776], )" + base + "}",
       "field 'eos_token_id': expected an integer or a list of 32-bit integers, found element 1099511627776"},
      {R"({"model_type": "glm", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 20000000})",
       "field 'num_hidden_layers': 20000000 is implausibly large (at most 1024)"},
      // Quoting a deeply nested value in the message recursed once a level: SIGSEGV at ~60,000.
      {R"({"model_type": "glm", "num_hidden_layers": )" + std::string(100000, '[') + std::string(100000, ']') +
           R"(, "hidden_size": 32, "num_attention_heads": 4})",
       "config.json: nests deeper than 64 levels"},
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

// A config file that is a symlink loop is named as such: config.json read as "missing",
// generation_config.json (the stop ids) was skipped without a word.
TEST_F(ModelConfigTest, ConfigFilesInASymlinkLoopAreNamed) {
  fs::create_symlink("config.json", dir_ / "config.json");
  auto config = Load();
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.status().message().find("config.json: not a regular file (a symlink loop)"), std::string::npos)
      << config.status();
  fs::remove(dir_ / "config.json");
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
                           "head_dim": 8})");
  fs::create_symlink("generation_config.json", dir_ / "generation_config.json");
  auto generation = Load();
  ASSERT_FALSE(generation.ok());
  EXPECT_NE(generation.status().message().find("generation_config.json: not a regular file (a symlink loop)"),
            std::string::npos)
      << generation.status();
}

// Python's json reads and writes NaN / Infinity (transformers loads such a config; a field it does
// not use may hold one); the whole file was refused as invalid JSON. A field glmserve reads names it.
TEST_F(ModelConfigTest, PythonNanAndInfinityLoadWhereUnused) {
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
    "head_dim": 8, "initializer_range": NaN, "attention_dropout": -Infinity, "note": "NaN and \"Infinity\" stay text"})");
  auto loaded = Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  Write("config.json", R"({"model_type": "glm4", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
    "head_dim": 8, "rope_theta": Infinity})");
  auto used = Load();
  ASSERT_FALSE(used.ok());
  EXPECT_NE(used.status().message().find("field 'rope_theta': expected a number, found string \"Infinity\""),
            std::string::npos)
      << used.status();
}

TEST_F(ModelConfigTest, NonGlmModelTypeIsRefusedByName) {
  Write("config.json", R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'llama' is not a GLM model"), std::string::npos) << c.status();
  // model_type decides, as in transformers: a GLM class name beside another type loaded as that
  // class (GLM-4.5V's glm4v_moe as a dense glm4v, failing later on its expert tensors).
  Write("config.json", R"({"model_type": "glm4v_moe", "architectures": ["Glm4vForConditionalGeneration"]})");
  auto moe = Load();
  ASSERT_FALSE(moe.ok());
  EXPECT_NE(moe.status().message().find("'glm4v_moe' is not a GLM model this server runs"), std::string::npos)
      << moe.status();
  EXPECT_NE(moe.status().message().find("mixture-of-experts layers are not supported"), std::string::npos)
      << moe.status();
  Write("config.json", R"({"model_type": "llama", "architectures": ["Glm4ForCausalLM"]})");
  EXPECT_FALSE(Load().ok());
  // Without a model_type the class name still says which GLM it is.
  Write("config.json", R"({"architectures": ["Glm4ForCausalLM"], "hidden_size": 32, "num_attention_heads": 4,
                          "num_hidden_layers": 2, "head_dim": 8})");
  auto by_class = Load();
  ASSERT_TRUE(by_class.ok()) << by_class.status();
  EXPECT_EQ(by_class->architecture, Architecture::kGlm4);
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
