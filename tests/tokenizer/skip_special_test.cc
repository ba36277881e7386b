// Which ids the response text leaves out (Tokenizer::IsSpecial), against transformers'
// decode(skip_special_tokens=True): tests/fixtures/tokenizer/skip_special_expected.json, written by
// tests/tokenizer/make_skip_special_expected.py. Added tokens that are not special (GLM-4.1V's
// <think>, <answer>) stay in the text; the final text, the streamed deltas (StreamDecoder) and the
// server's TextOutput agree. The tiktoken and sentencepiece formats keep all GLM special tokens
// special (transformers cannot load them without the checkpoints' remote code).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/tokenizer/stream_decoder.h"
#include "runtime/tokenizer/text_output.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/testutil/read_file.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve::tokenizer {
namespace {

using json = nlohmann::json;

const std::string kFixtures = std::string(GLMSERVE_FIXTURES_DIR);
const std::string kGlm4vModel = kFixtures + "/glm4v/tiny-safetensors-sharded";

const json& Expected() {
  static const json* j =
      new json(json::parse(testing::ReadWholeFile(kFixtures + "/tokenizer/skip_special_expected.json")));
  return *j;
}

std::string DirOf(const std::string& name) {
  if (name == "glm4v") return kGlm4vModel;
  if (name == "glm4-tiny") return std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny";
  return kFixtures + "/tokenizer/" + name;
}

std::unique_ptr<Tokenizer> Load(const std::string& dir) {
  auto t = Tokenizer::FromDirectory(dir);
  EXPECT_TRUE(t.ok()) << dir << ": " << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// The text a streaming response builds: StreamDecoder deltas (skipping specials), then Finish().
std::string Streamed(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  StreamDecoder dec(&tok, /*skip_special_tokens=*/true);
  std::string text;
  for (int32_t id : ids) text += dec.Add(id);
  return text + dec.Finish();
}

// The server's response text (TextOutput, no stop strings), fed one id at a time.
std::string ResponseText(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  TextOutput out(&tok, {});
  std::string text;
  for (int32_t id : ids) out.Add({id}, &text);
  return text + out.Finish();
}

// IsSpecial is true exactly for transformers' skipped ids, over the whole vocabulary.
void ExpectSkippedIds(const Tokenizer& tok, const json& want, const std::string& what) {
  const auto skipped = want["skipped_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(tok.vocab_size(), want["vocab_size"].get<int32_t>()) << what;
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    const bool want_special = std::find(skipped.begin(), skipped.end(), id) != skipped.end();
    EXPECT_EQ(tok.IsSpecial(id), want_special) << what << ": id " << id << " '" << tok.TokenBytes(id) << "'";
  }
}

void ExpectDecodes(const Tokenizer& tok, const json& want, const std::string& what) {
  const json& seqs = want["sequences"];
  ASSERT_FALSE(seqs.empty());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const auto ids = seqs[i]["ids"].get<std::vector<int32_t>>();
    const std::string all = seqs[i]["decode"], skip = seqs[i]["decode_skip_special"];
    std::vector<int32_t> kept;
    for (int32_t id : ids) {
      if (!tok.IsSpecial(id)) kept.push_back(id);
    }
    EXPECT_EQ(tok.Decode(ids), all) << what << " sequence " << i;
    EXPECT_EQ(tok.Decode(kept), skip) << what << " sequence " << i;
    EXPECT_EQ(Streamed(tok, ids), skip) << what << " sequence " << i << " (streamed)";
    EXPECT_EQ(ResponseText(tok, ids), skip) << what << " sequence " << i << " (TextOutput)";
  }
}

class SkipSpecialTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SkipSpecialTest, SkippedIdsEqualTransformers) {
  auto tok = Load(DirOf(GetParam()));
  ASSERT_NE(tok, nullptr);
  ExpectSkippedIds(*tok, Expected()["tokenizers"][GetParam()], GetParam());
}

TEST_P(SkipSpecialTest, DecodeAndStreamedTextEqualTransformers) {
  auto tok = Load(DirOf(GetParam()));
  ASSERT_NE(tok, nullptr);
  ExpectDecodes(*tok, Expected()["tokenizers"][GetParam()], GetParam());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SkipSpecialTest, ::testing::Values("glm4v", "glm4-tiny", "glm4-hf"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// The case the Open-AutoGLM agent depends on (transformers' text, also in the json above): its
// action is read out of <answer>...</answer> in the response text.
TEST(SkipSpecial, Glm4vKeepsThinkAndAnswer) {
  auto tok = Load(kGlm4vModel);
  ASSERT_NE(tok, nullptr);
  const std::vector<int32_t> ids = {0, 36, 225, 62, 238, 205, 43, 174};  // chat_expected.json one_image_url
  EXPECT_EQ(ResponseText(*tok, ids), "!E.\")_<answer>omLem");
  for (const char* t : {"<think>", "</think>", "<answer>", "</answer>"}) {
    auto id = tok->SpecialTokenId(t);
    ASSERT_TRUE(id.has_value()) << t;
    EXPECT_FALSE(tok->IsSpecial(*id)) << t;
    EXPECT_EQ(Streamed(*tok, {*id}), t);
  }
  for (const char* t : {"<|user|>", "<|endoftext|>", "<|image|>", "[gMASK]"}) {
    auto id = tok->SpecialTokenId(t);
    ASSERT_TRUE(id.has_value()) << t;
    EXPECT_TRUE(tok->IsSpecial(*id)) << t;
  }
  // Added tokens in a prompt are still single ids, special or not (as HF tokenizers splits them).
  EXPECT_EQ(tok->Encode("<think>x</think><answer>", false).front(), *tok->SpecialTokenId("<think>"));
  EXPECT_EQ(tok->Encode("<answer>", false), std::vector<int32_t>{*tok->SpecialTokenId("<answer>")});
}

// GLM-4-9B's tiktoken format and ChatGLM3's sentencepiece format: all their GLM special tokens stay
// special (GLM-4-9B-chat's tokenizer_config.json marks each "special": true and lists them all in
// additional_special_tokens, what its tokenizer's decode skips; ChatGLM3 keeps them in its
// special-token table), and no text id is.
TEST(SkipSpecial, TiktokenAndSentencepieceKeepTheirSpecials) {
  struct Case {
    const char* dir;
    std::vector<std::string> specials;
  };
  const std::vector<Case> cases = {
      {"/tokenizer/glm4-tiktoken",
       {"<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
        "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>"}},
      {"/tokenizer/chatglm3-sp",
       {"[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
        "</s>"}},
  };
  for (const Case& c : cases) {
    auto tok = Load(kFixtures + c.dir);
    ASSERT_NE(tok, nullptr);
    std::vector<int32_t> want;
    for (const std::string& s : c.specials) {
      auto id = tok->SpecialTokenId(s);
      ASSERT_TRUE(id.has_value()) << c.dir << " " << s;
      want.push_back(*id);
    }
    std::vector<int32_t> got;
    for (int32_t id = 0; id < tok->vocab_size(); ++id) {
      if (tok->IsSpecial(id)) got.push_back(id);
    }
    std::sort(want.begin(), want.end());
    EXPECT_EQ(got, want) << c.dir;
    // [gMASK] <sop> <|user|> "\nhi there" <|assistant|>: only the text is left.
    const std::vector<int32_t> ids = tok->ApplyChatTemplate({{"user", "hi there", {}}}).value();
    EXPECT_EQ(ResponseText(*tok, ids), "\nhi there") << c.dir;
  }
}

// tokenizer_config.json makes more tokens special in transformers (added_tokens_decoder
// "special": true, "*_token" keys, an extra_special_tokens object) and cannot make a special token
// text; the expected skip sets are transformers' on the same files.
class ConfigVariantTest : public glmserve::testing::ScratchDirTest {};

TEST_F(ConfigVariantTest, SkippedIdsEqualTransformers) {
  const json& variants = Expected()["config_variants"];
  ASSERT_GE(variants.size(), 10u);
  const std::string tokenizer_json = testing::ReadWholeFile(kGlm4vModel + "/tokenizer.json");
  for (auto it = variants.begin(); it != variants.end(); ++it) {
    Write("tokenizer.json", tokenizer_json);
    Write("tokenizer_config.json", it.value()["tokenizer_config"].dump());
    auto tok = Load(dir_.string());
    ASSERT_NE(tok, nullptr) << it.key();
    ExpectSkippedIds(*tok, it.value(), it.key());
    ExpectDecodes(*tok, it.value(), it.key());
  }
}

TEST_F(ConfigVariantTest, MalformedSpecialFlagsAreRefusedNamingTheField) {
  json tj = json::parse(testing::ReadWholeFile(kGlm4vModel + "/tokenizer.json"));
  tj["added_tokens"][8]["special"] = "no";
  Write("tokenizer.json", tj.dump());
  auto t = Tokenizer::FromDirectory(dir_.string());
  ASSERT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(t.status().message().find("added_tokens[8].special: expected true or false"), std::string::npos)
      << t.status();

  Write("tokenizer.json", testing::ReadWholeFile(kGlm4vModel + "/tokenizer.json"));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"added_tokens_decoder": [1]})", "added_tokens_decoder: expected an object"},
      {R"({"added_tokens_decoder": {"x": {"content": "<a>"}}})",
       "added_tokens_decoder[\"x\"]: expected a token id in [0, 16777216) as the key"},
      {R"({"added_tokens_decoder": {"238": "<answer>"}})", "added_tokens_decoder[\"238\"]: expected an object"},
      {R"({"added_tokens_decoder": {"238": {"content": "<answer>", "special": 1}}})",
       "added_tokens_decoder[\"238\"].special: expected true or false"},
  };
  for (const auto& [cfg, want] : bad) {
    Write("tokenizer_config.json", cfg);
    auto r = Tokenizer::FromDirectory(dir_.string());
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << cfg;
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find("tokenizer_config.json"), std::string::npos) << r.status();
  }
}

}  // namespace
}  // namespace glmserve::tokenizer
