// GLM-4.1V's chat template (images as content parts) against transformers' Glm4vProcessor on the
// tiny glm4v fixture (tests/fixtures/glm4v: scripts/make_glm4v_chat_fixtures.py writes its
// tokenizer, the real template and chat_expected.json), and the text-only families' refusal of
// image parts.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/tokenizer/chat_template.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/testutil/read_file.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve::tokenizer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kGlm4v = std::string(GLMSERVE_FIXTURES_DIR) + "/glm4v";
const std::string kModel = kGlm4v + "/tiny-safetensors-sharded";
const std::string kTokenizerFixtures = std::string(GLMSERVE_FIXTURES_DIR) + "/tokenizer";

json ReadJson(const std::string& path) { return json::parse(testing::ReadWholeFile(path)); }

// An OpenAI chat message (string content, or text / image_url parts) as the server builds it.
Message ToMessage(const json& m) {
  Message out;
  out.role = m["role"];
  if (m["content"].is_string()) {
    out.content = m["content"];
    return out;
  }
  for (const json& p : m["content"]) {
    if (p["type"] == "image_url")
      out.parts.push_back({MessagePart::Kind::kImage, ""});
    else
      out.parts.push_back({MessagePart::Kind::kText, p["text"]});
  }
  return out;
}

std::vector<Message> ToMessages(const json& messages) {
  std::vector<Message> out;
  for (const json& m : messages) out.push_back(ToMessage(m));
  return out;
}

MessagePart Text(const std::string& t) { return {MessagePart::Kind::kText, t}; }
MessagePart Image() { return {MessagePart::Kind::kImage, ""}; }

std::unique_ptr<Tokenizer> Load(const std::string& dir) {
  auto t = Tokenizer::FromDirectory(dir);
  EXPECT_TRUE(t.ok()) << dir << ": " << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(Glm4vChat, FixtureTokenizerLoadsWithTheRecognizedTemplate) {
  auto tok = Load(kModel);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->format(), "tokenizer.json");
  EXPECT_EQ(tok->family(), Family::kGlm4v);
  EXPECT_TRUE(tok->accepts_images());
  EXPECT_EQ(tok->chat_template_source(), "chat_template (recognized GLM-4.1V template)");
  // The placeholder's ids are the model's (config.json, written by transformers).
  const json config = ReadJson(kModel + "/config.json");
  EXPECT_EQ(tok->SpecialTokenId("<|begin_of_image|>"), config["image_start_token_id"].get<int32_t>());
  EXPECT_EQ(tok->SpecialTokenId("<|image|>"), config["image_token_id"].get<int32_t>());
  EXPECT_EQ(tok->SpecialTokenId("<|end_of_image|>"), config["image_end_token_id"].get<int32_t>());
  EXPECT_EQ(tok->SpecialTokenId("<|begin_of_video|>"), config["video_start_token_id"].get<int32_t>());
  EXPECT_EQ(tok->SpecialTokenId("<|video|>"), config["video_token_id"].get<int32_t>());
  EXPECT_EQ(tok->SpecialTokenId("<|end_of_video|>"), config["video_end_token_id"].get<int32_t>());
  // generation_config's eos ids (<|endoftext|>, <|user|>) end a turn.
  const auto eos = ReadJson(kModel + "/generation_config.json")["eos_token_id"].get<std::vector<int32_t>>();
  const auto stop = tok->DefaultStopIds();
  for (int32_t id : eos) EXPECT_NE(std::find(stop.begin(), stop.end(), id), stop.end()) << id;
  EXPECT_LE(tok->vocab_size(), config["text_config"]["vocab_size"].get<int32_t>());
}

class Glm4vConversationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    expected_ = ReadJson(kGlm4v + "/chat_expected.json");
    tok_ = Load(kModel);
    ASSERT_NE(tok_, nullptr);
    ASSERT_GE(expected_["conversations"].size(), 5u);
  }
  json expected_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(Glm4vConversationTest, ChatIdsIdenticalToTransformers) {
  const int32_t image_id = *tok_->SpecialTokenId("<|image|>");
  for (const json& c : expected_["conversations"]) {
    const auto want = c["input_ids"].get<std::vector<int32_t>>();
    auto ids = tok_->ApplyChatTemplate(ToMessages(c["messages"]), /*add_generation_prompt=*/true);
    ASSERT_TRUE(ids.ok()) << c["name"] << ": " << ids.status();
    EXPECT_EQ(*ids, want) << c["name"];
    EXPECT_EQ(tok_->Decode(*ids), c["prompt"].get<std::string>()) << c["name"];
    // One placeholder per image, in order: what runtime/vision expands.
    EXPECT_EQ(std::count(ids->begin(), ids->end(), image_id), static_cast<long>(c["images"].size())) << c["name"];
  }
}

TEST_F(Glm4vConversationTest, RenderedPromptEncodesLikeTransformers) {
  for (const json& c : expected_["conversations"]) {
    const auto want = c["input_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->Encode(c["prompt"].get<std::string>(), /*add_special_tokens=*/false), want) << c["name"];
    EXPECT_EQ(tok_->Encode(c["prompt"].get<std::string>()), want) << c["name"] << " (no post-processor ids)";
  }
}

TEST_F(Glm4vConversationTest, WithoutGenerationPromptIsThePrefix) {
  for (const json& c : expected_["conversations"]) {
    auto want = c["input_ids"].get<std::vector<int32_t>>();
    // transformers' prompt ends with the generation prompt "<|assistant|>\n" (two ids).
    ASSERT_GE(want.size(), 2u);
    EXPECT_EQ(tok_->Decode({want.end() - 2, want.end()}), "<|assistant|>\n") << c["name"];
    want.resize(want.size() - 2);
    auto ids = tok_->ApplyChatTemplate(ToMessages(c["messages"]), /*add_generation_prompt=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, want) << c["name"];
  }
}

TEST_F(Glm4vConversationTest, PhoneAgentHistoryHasOneImageInTheLastUserMessage) {
  const json* agent = nullptr;
  for (const json& c : expected_["conversations"])
    if (c["name"] == "phone_agent_5_steps") agent = &c;
  ASSERT_NE(agent, nullptr);
  const std::vector<Message> messages = ToMessages((*agent)["messages"]);
  EXPECT_EQ(std::count_if(messages.begin(), messages.end(), [](const Message& m) { return m.role == "assistant"; }), 5);
  EXPECT_EQ((*agent)["images"].size(), 1u);
  auto ids = tok_->ApplyChatTemplate(messages);
  ASSERT_TRUE(ids.ok()) << ids.status();
  // The image sits just before the final "<|assistant|>\n".
  const auto want = (*agent)["input_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(*ids, want);
  EXPECT_EQ(tok_->Decode({ids->end() - 5, ids->end()}), std::string(kGlm4vImagePlaceholder) + "<|assistant|>\n");
}

// Error paths of the vision template: each names the message (and part) at fault.
void ExpectRefused(const Tokenizer& tok, const std::vector<Message>& messages, const std::string& path) {
  auto ids = tok.ApplyChatTemplate(messages);
  ASSERT_FALSE(ids.ok()) << path;
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ids.status().message().rfind(path + ":", 0), 0u) << ids.status().message();
}

TEST_F(Glm4vConversationTest, ImagesOnlyInUserMessages) {
  ExpectRefused(*tok_, {{"system", "", {Text("look "), Image()}}, {"user", "hi", {}}}, "messages[0].content[1]");
  ExpectRefused(*tok_, {{"user", "hi", {}}, {"assistant", "", {Image()}}}, "messages[1].content[0]");
}

TEST_F(Glm4vConversationTest, ObservationRoleRefused) {
  // GLM-4.1V's template has no observation branch: transformers would drop the message silently.
  ExpectRefused(*tok_, {{"user", "hi", {}}, {"observation", "{\"ok\": true}", {}}}, "messages[1].role");
}

TEST_F(Glm4vConversationTest, VisionTokensWrittenAsTextRefused) {
  ExpectRefused(*tok_, {{"user", "see <|image|> here", {}}}, "messages[0].content");
  ExpectRefused(*tok_, {{"user", "", {Image(), Text("<|begin_of_image|>")}}}, "messages[0].content[1]");
  // Other special tokens in text parse to their ids, as transformers' tokenizer does.
  EXPECT_TRUE(tok_->ApplyChatTemplate({{"user", "<think>x</think>", {}}}).ok());
}

TEST(TextOnlyFamilies, RefuseImagePartsNamingThePart) {
  for (const std::string& dir :
       {std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny", kTokenizerFixtures + "/glm4-hf",
        kTokenizerFixtures + "/glm4-tiktoken", kTokenizerFixtures + "/chatglm3-sp"}) {
    auto tok = Load(dir);
    ASSERT_NE(tok, nullptr);
    EXPECT_FALSE(tok->accepts_images()) << dir;
    auto ids = tok->ApplyChatTemplate({{"system", "Be brief.", {}}, {"user", "", {Text("look at "), Image()}}});
    ASSERT_FALSE(ids.ok()) << dir;
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument) << dir;
    EXPECT_EQ(ids.status().message().rfind("messages[1].content[1]:", 0), 0u) << ids.status().message();
    EXPECT_NE(ids.status().message().find("text-only"), std::string::npos) << ids.status().message();
  }
}

TEST(TextOnlyFamilies, TextPartsAreTheContent) {
  // tests/fixtures/tokenizer's first conversation, its user message split into text parts, gives
  // the reference ids of the whole string.
  const json conversation = ReadJson(kTokenizerFixtures + "/conversations.json")[0];
  const json expected = ReadJson(kTokenizerFixtures + "/expected.json");
  ASSERT_EQ(conversation[1]["role"], "user");
  const std::string user = conversation[1]["content"];
  ASSERT_GE(user.size(), 3u);
  for (const auto& [name, dir] :
       std::vector<std::pair<std::string, std::string>>{{"glm4-hf", kTokenizerFixtures + "/glm4-hf"},
                                                        {"glm4-tiktoken", kTokenizerFixtures + "/glm4-tiktoken"},
                                                        {"chatglm3-sp", kTokenizerFixtures + "/chatglm3-sp"}}) {
    auto tok = Load(dir);
    ASSERT_NE(tok, nullptr);
    std::vector<Message> messages = {
        {conversation[0]["role"], conversation[0]["content"], {}},
        {"user", "ignored when parts are given", {Text(user.substr(0, 3)), Text(user.substr(3))}}};
    auto ids = tok->ApplyChatTemplate(messages);
    ASSERT_TRUE(ids.ok()) << name << ": " << ids.status();
    EXPECT_EQ(*ids, expected[name]["chat"][0].get<std::vector<int32_t>>()) << name;
  }
}

// A checkpoint directory built from the fixture's tokenizer with another template / config.
class Glm4vTemplateDirTest : public glmserve::testing::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) fs::copy_file(fs::path(kModel) / f, dir_ / f);
    template_ = testing::ReadWholeFile(kModel + "/chat_template.jinja");
    ASSERT_NE(template_.find("<|begin_of_image|>"), std::string::npos);
  }
  void WriteGlm4vConfig() { Write("config.json", R"({"model_type": "glm4v"})"); }
  std::string Replace(std::string s, const std::string& from, const std::string& to) {
    const size_t p = s.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    if (p != std::string::npos) s.replace(p, from.size(), to);
    return s;
  }
  std::string template_;
};

TEST_F(Glm4vTemplateDirTest, WhitespaceVariantsAreRecognized) {
  // SGLang's copy (test/srt/test_jinja_template_utils.py) lacks the blank line after
  // <|user|>{{ '\n' }}; `{%-` strips it anyway. Plus a trailing newline and re-indented tags.
  for (const std::string& variant :
       {Replace(template_, "<|user|>{{ '\\n' }}\n\n", "<|user|>{{ '\\n' }}\n"), template_ + "\n",
        Replace(template_, "    {%- elif msg.role == 'user' %}", "\t{%-   elif  msg.role == 'user'   %}")}) {
    Write("chat_template.jinja", variant);
    auto tok = Load(dir_.string());
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->chat_template_source(), "chat_template (recognized GLM-4.1V template)");
    EXPECT_EQ(tok->family(), Family::kGlm4v);
  }
}

TEST_F(Glm4vTemplateDirTest, EditedTemplateOfAGlm4vCheckpointFallsBackToGlm4vFormat) {
  WriteGlm4vConfig();
  // Output-changing edits: no newline after the generation prompt; an extra newline after <|system|>.
  for (const std::string& edited : {Replace(template_, "<|assistant|>\n{% endif %}", "<|assistant|>{% endif %}"),
                                    Replace(template_, "<|system|>\n", "<|system|>\n\n")}) {
    Write("chat_template.jinja", edited);
    auto tok = Load(dir_.string());
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->chat_template_source(), "family default (chat_template not recognized; rendered as GLM-4.1V)");
    EXPECT_EQ(tok->family(), Family::kGlm4v);
    // The family default is GLM-4.1V's format: transformers' ids for the real template.
    // Named: a range-for over a temporary's member would walk freed memory.
    const json expected = ReadJson(kGlm4v + "/chat_expected.json");
    for (const json& c : expected["conversations"]) {
      auto ids = tok->ApplyChatTemplate(ToMessages(c["messages"]));
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(*ids, c["input_ids"].get<std::vector<int32_t>>()) << c["name"];
    }
  }
}

TEST_F(Glm4vTemplateDirTest, EditedTemplateWithoutAGlm4vConfigIsTextOnlyGlm4) {
  Write("chat_template.jinja", Replace(template_, "<|assistant|>\n{% endif %}", "<|assistant|>{% endif %}"));
  auto tok = Load(dir_.string());
  ASSERT_NE(tok, nullptr);
  // A text model's template the built-in renderers do not know runs on the Jinja engine.
  EXPECT_EQ(tok->chat_template_source(), "chat_template (run by the Jinja engine)");
  EXPECT_EQ(tok->family(), Family::kGlm4);
  auto ids = tok->ApplyChatTemplate({{"user", "", {Image(), Text("what is this?")}}});
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ids.status().message().rfind("messages[0].content[0]:", 0), 0u) << ids.status().message();
}

TEST_F(Glm4vTemplateDirTest, NoTemplateInAGlm4vCheckpointIsGlm4vFormat) {
  WriteGlm4vConfig();
  auto tok = Load(dir_.string());
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->chat_template_source(), "family default (no chat_template; rendered as GLM-4.1V)");
  EXPECT_TRUE(tok->accepts_images());
}

TEST_F(Glm4vTemplateDirTest, MissingImageTokenFailsTheLoad) {
  Write("chat_template.jinja", template_);
  json t = ReadJson((dir_ / "tokenizer.json").string());
  json kept = json::array();
  for (const json& a : t["added_tokens"])
    if (a["content"] != "<|image|>") kept.push_back(a);
  t["added_tokens"] = kept;
  Write("tokenizer.json", t.dump());
  auto tok = Tokenizer::FromDirectory(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("tokenizer.json"), std::string::npos) << tok.status().message();
  EXPECT_NE(tok.status().message().find("'<|image|>'"), std::string::npos) << tok.status().message();
}

}  // namespace

// Whitespace inside {% %} / {{ }} tags changes nothing in Jinja; between them it is prompt text.
// A template with a newline more (after <|assistant|>, after the content) or a space after the
// role was taken for the minimal one and rendered without it, where transformers renders it.
TEST(ChatTemplateRecognition, LiteralWhitespaceIsPartOfTheTemplate) {
  const std::string minimal =
      "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}";
  EXPECT_TRUE(IsKnownGlm4Template(minimal));
  EXPECT_TRUE(
      IsKnownGlm4Template("[gMASK]<sop>{%for message in messages%}<|{{message.role}}|>\n{{  message.content }}"
                          "{%  endfor %}{%\n if add_generation_prompt %}<|assistant|>{% endif\t%}"));
  for (const std::string& other : {
           std::string("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
           std::string("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
           std::string("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|> \n{{ message['content'] }}"
                       "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"),
       }) {
    EXPECT_FALSE(IsKnownGlm4Template(other)) << other;
  }
}

}  // namespace glmserve::tokenizer
