// Checkpoint chat templates the built-in renderers do not recognize, run by the Jinja engine
// (runtime/tokenizer/jinja_chat.h), against what transformers renders for them
// (tests/fixtures/chat_templates/goldens.json: scripts/make_chat_template_goldens.py), byte for
// byte; a model directory with GLM-Z1's template gives transformers' prompt ids; bad and hostile
// templates are refused or fail the request, never the process.
#include "runtime/tokenizer/jinja_chat.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/testutil/read_file.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve::tokenizer {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::string kTemplates = std::string(GLMSERVE_FIXTURES_DIR) + "/chat_templates";
const std::string kTinyModel = std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny";

json Goldens() { return json::parse(testing::ReadWholeFile(kTemplates + "/goldens.json")); }

std::vector<Message> ToMessages(const json& messages) {
  std::vector<Message> out;
  for (const json& m : messages) out.push_back(Message{m["role"], m["content"]});
  return out;
}

std::unique_ptr<JinjaChatTemplate> Parse(const std::string& source) {
  auto t = JinjaChatTemplate::Create(source, "test template", {{"eos_token", "<|endoftext|>"}});
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(JinjaChatTemplate, RendersEveryFixtureTemplateAsTransformers) {
  const json goldens = Goldens();
  ASSERT_GE(goldens["cases"].size(), 60u);
  std::map<std::string, std::unique_ptr<JinjaChatTemplate>> parsed;
  int compared = 0;
  for (const json& c : goldens["cases"]) {
    const std::string name = c["template"];
    if (!parsed.count(name)) parsed[name] = Parse(testing::ReadWholeFile(kTemplates + "/" + name));
    ASSERT_NE(parsed[name], nullptr) << name;
    const absl::StatusOr<std::string> text =
        parsed[name]->Render(ToMessages(c["messages"]), c["add_generation_prompt"]);
    if (c.contains("error")) {
      EXPECT_FALSE(text.ok()) << name << " " << c["messages"].dump() << ": transformers raised " << c["error"];
      continue;
    }
    ASSERT_TRUE(text.ok()) << name << " " << c["messages"].dump() << ": " << text.status();
    EXPECT_EQ(*text, c["text"].get<std::string>()) << name << " " << c["messages"].dump();
    ++compared;
  }
  EXPECT_GE(compared, 60);
}

// tojson's second positional argument is ensure_ascii, as transformers defines the filter, and
// DEL is escaped under it as json.dumps escapes it ('"a\u007fb"').
TEST(JinjaChatTemplate, ToJsonTakesTransformersArguments) {
  auto t = Parse("{{ messages[0].content | tojson(true) }}");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Render({Message{"user", "a\x7f\xc3\xa9"}}, false), "\"a\\u007f\\u00e9\"");
}

TEST(JinjaChatTemplate, ToJsonIsPythonsJsonDumps) {
  // Ordered: json.dumps keeps a dict's insertion order (unless sort_keys).
  const auto goldens = nlohmann::ordered_json::parse(testing::ReadWholeFile(kTemplates + "/goldens.json"));
  ASSERT_GE(goldens["dumps"].size(), 5u);
  for (const auto& d : goldens["dumps"]) {
    const auto& kw = d["kwargs"];
    const bool indented = kw.contains("indent");
    const std::string item =
        kw.contains("separators") ? kw["separators"][0].get<std::string>() : (indented ? "," : ", ");
    const std::string key = kw.contains("separators") ? kw["separators"][1].get<std::string>() : ": ";
    EXPECT_EQ(JinjaChatTemplate::PythonJsonDumps(d["value"].dump(), kw.value("ensure_ascii", true),
                                                 indented ? kw["indent"].get<int>() : -1, item, key,
                                                 kw.value("sort_keys", false)),
              d["text"].get<std::string>())
        << d.dump();
  }
}

// A model directory whose template is GLM-Z1's (not one the built-in renderers know): the prompt
// ids are transformers' apply_chat_template ids for it.
class JinjaChatTokenizerTest : public testing::ScratchDirTest {
 protected:
  // glm4-tiny's tokenizer in the scratch directory, its tokenizer_config.json's chat_template set to
  // `chat_template` (removed when empty), loaded.
  std::unique_ptr<Tokenizer> LoadWithTemplate(const std::string& chat_template) {
    fs::copy_file(kTinyModel + "/tokenizer.json", dir_ / "tokenizer.json");
    json config = json::parse(testing::ReadWholeFile(kTinyModel + "/tokenizer_config.json"));
    if (chat_template.empty()) {
      config.erase("chat_template");
    } else {
      config["chat_template"] = chat_template;
    }
    Write("tokenizer_config.json", config.dump());
    auto tok = Tokenizer::FromDirectory(dir_.string());
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(*tok) : nullptr;
  }
};

TEST_F(JinjaChatTokenizerTest, UnrecognizedTemplateRunsOnTheJinjaEngine) {
  Write("chat_template.jinja", testing::ReadWholeFile(kTemplates + "/GLM-Z1-9B-0414.jinja"));
  const std::unique_ptr<Tokenizer> tok = LoadWithTemplate("");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->chat_template_source(), "chat_template (run by the Jinja engine)");
  int compared = 0;
  const json goldens = Goldens();
  for (const json& c : goldens["cases"]) {
    if (c["template"] != "GLM-Z1-9B-0414.jinja" || !c.contains("ids")) continue;
    auto ids = tok->ApplyChatTemplate(ToMessages(c["messages"]), c["add_generation_prompt"]);
    ASSERT_TRUE(ids.ok()) << c["messages"].dump() << ": " << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<int32_t>>()) << c["messages"].dump();
    ++compared;
  }
  EXPECT_GE(compared, 10);
}

// The named special tokens are template variables as transformers passes its special_tokens_map:
// glm4-tiny's tokenizer_config.json names eos_token and pad_token (transformers renders this
// template to "[|<|endoftext|>|<|endoftext|>|]"; bos_token and unk_token are undefined: empty).
TEST_F(JinjaChatTokenizerTest, NamedSpecialTokensAreTemplateVariables) {
  const std::unique_ptr<Tokenizer> tok =
      LoadWithTemplate("[{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}]");
  ASSERT_NE(tok, nullptr);
  auto ids = tok->ApplyChatTemplate({Message{"user", "x"}}, false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(tok->Decode(*ids), "[|<|endoftext|>|<|endoftext|>|]");
}

// A template that cannot render a plain user turn falls back to the family's format and says why.
TEST_F(JinjaChatTokenizerTest, TemplateThatFailsThePlainTurnFallsBackNamingTheReason) {
  const std::unique_ptr<Tokenizer> tok = LoadWithTemplate("{{ raise_exception('this template takes no user turns') }}");
  ASSERT_NE(tok, nullptr);
  const std::string source = tok->chat_template_source();
  EXPECT_NE(source.find("chat_template not recognized"), std::string::npos) << source;
  EXPECT_NE(source.find("this template takes no user turns"), std::string::npos) << source;
  EXPECT_NE(source.find("tokenizer_config.json's chat_template"), std::string::npos) << source;
  EXPECT_NE(source.find("rendered as GLM-4"), std::string::npos) << source;
}

// Expressions and filters one line each (tests/fixtures/chat_templates/expressions.json:
// scripts/make_jinja_expression_goldens.py): Python's arithmetic, characters rather than bytes,
// undefined past a list's end, Jinja's filters; where transformers raises, the render fails.
TEST(JinjaChatTemplate, RendersExpressionsAndFiltersAsTransformers) {
  const json fixture = json::parse(testing::ReadWholeFile(kTemplates + "/expressions.json"));
  const std::vector<Message> messages = ToMessages(fixture["messages"]);
  int checked = 0;
  for (const json& c : fixture["cases"]) {
    const std::string source = c["template"];
    auto t = Parse(source);
    ASSERT_NE(t, nullptr) << source;
    const absl::StatusOr<std::string> r = t->Render(messages, true);
    if (c.contains("error")) {
      EXPECT_FALSE(r.ok()) << source << " rendered " << *r << "; transformers: " << c["error"];
    } else {
      ASSERT_TRUE(r.ok()) << source << ": " << r.status();
      EXPECT_EQ(*r, c["text"].get<std::string>()) << source;
    }
    ++checked;
  }
  EXPECT_GE(checked, 150);
}

TEST(JinjaChatTemplate, AFilterTheEngineLacksIsNamed) {
  auto t = Parse("{{ messages|groupby('role')|list|length }}");
  ASSERT_NE(t, nullptr);
  const absl::StatusOr<std::string> r = t->Render({Message{"user", "x"}}, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("No filter named 'groupby'"), std::string::npos) << r.status();
}

TEST(JinjaChatTemplate, RaisedErrorsAreTheRequestsNotTheProcess) {
  auto t = Parse(
      "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tool role here') }}"
      "{% endif %}{{ m.content }}{% endfor %}");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Render({Message{"user", "fine"}}, true), "fine");
  const absl::StatusOr<std::string> refused = t->Render({Message{"tool", "x"}}, true);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("no tool role here"), std::string::npos) << refused.status();
  EXPECT_NE(refused.status().message().find("messages: "), std::string::npos) << refused.status();
  EXPECT_FALSE(t->Render({}, true).ok()) << "no messages";
}

// Whitespace as Jinja (transformers' configuration) leaves it; the values are transformers' own
// renderings of these templates for one user turn "hi". lstrip_blocks strips before block tags only
// (minja stripped before {{ }} too: a ChatGLM3-style "|>\n {{ content }}" lost its space), and a
// template with CRLF line ends renders \n as Jinja's lexer does.
TEST(JinjaChatTemplate, WhitespaceAsJinja) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{% for m in messages %}<|{{ m.role }}|>\n {{ m['content'] }}{% endfor %}", "<|user|>\n hi"},
      {"{% for m in messages %}<|user|>\r\n{{ m.content }}\r\n{% endfor %}", "<|user|>\nhi\n"},
      {"{% for m in messages %}\n   {{ m.content }}\n  {% if true %}x{% endif %}{% endfor %}", "   hi\nx"},
  };
  for (const auto& [source, want] : cases) {
    auto t = Parse(source);
    ASSERT_NE(t, nullptr) << source;
    EXPECT_EQ(*t->Render({Message{"user", "hi"}}, false), want) << source;
  }
}

TEST(JinjaChatTemplate, HostileTemplatesAreRefusedOrFailWithoutACrash) {
  // A division by zero a message can bring about (SIGFPE in stock minja), huge ranges and repeated
  // strings (memory), a list holding itself (recursion without end), a 60 KB comment (std::regex
  // recursing a frame a character): the request's error, or a template that loads.
  for (const std::string& source :
       {std::string("{{ 10 // (messages[0].content|length - 3) }}"), std::string("{{ 1 % (messages|length - 1) }}"),
        std::string("{% for i in range(10**9) %}x{% endfor %}"),
        std::string("{% for i in range(0, 10, 0) %}x{% endfor %}"), std::string("{{ 'ab' * 100000000 }}"),
        std::string("{% set l = [] %}{% set _ = l.append(l) %}{{ l }}")}) {
    auto t = Parse(source);
    ASSERT_NE(t, nullptr) << source;
    const absl::StatusOr<std::string> r = t->Render({Message{"user", "abc"}}, true);
    EXPECT_FALSE(r.ok()) << source;
    EXPECT_LE(r.status().message().size(), 1000u) << source;
  }
  // Doubling by concatenation stops at the engine's size limit (it grew to gigabytes of memory
  // before an allocation failed).
  for (const std::string& join : {std::string("ns.s ~ ns.s"), std::string("ns.s + ns.s")}) {
    auto doubling = Parse("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = " + join +
                          " %}{% endfor %}{{ ns.s|length }}");
    ASSERT_NE(doubling, nullptr);
    const absl::StatusOr<std::string> r = doubling->Render({Message{"user", "abc"}}, true);
    ASSERT_FALSE(r.ok()) << join;
    EXPECT_NE(r.status().message().find("size limit"), std::string::npos) << r.status();
  }
  auto list_doubling =
      Parse("{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{% set ns.l = ns.l + ns.l %}{% endfor %}");
  ASSERT_NE(list_doubling, nullptr);
  const absl::StatusOr<std::string> list_result = list_doubling->Render({Message{"user", "abc"}}, true);
  ASSERT_FALSE(list_result.ok());
  EXPECT_NE(list_result.status().message().find("size limit"), std::string::npos) << list_result.status();
  // replace() is linear (a 4 MB message took 10-18 s) and Python's for an empty `before`.
  auto replacing = Parse("{{ messages[0].content.replace('a', 'bb') }}|{{ 'abc'.replace('', '-') }}");
  ASSERT_NE(replacing, nullptr);
  const absl::StatusOr<std::string> replaced = replacing->Render({Message{"user", std::string(4 << 20, 'a')}}, true);
  ASSERT_TRUE(replaced.ok()) << replaced.status();
  EXPECT_EQ(replaced->size(), (size_t{8} << 20) + 1 + 7);
  EXPECT_EQ(replaced->substr(replaced->size() - 8), "|-a-b-c-");
  auto commented = Parse("{# " + std::string(60000, 'c') + " #}{{ messages[0].content }}");
  ASSERT_NE(commented, nullptr);
  EXPECT_EQ(*commented->Render({Message{"user", "hi"}}, false), "hi");

  // A macro calling itself without end: a stack overflow (SIGSEGV) in stock minja.
  auto recursive = Parse("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  ASSERT_NE(recursive, nullptr);
  const absl::StatusOr<std::string> deep = recursive->Render({Message{"user", "x"}}, true);
  EXPECT_FALSE(deep.ok());
  EXPECT_LE(deep.status().message().size(), 1000u) << "the repeated location is cut short";
  // Deep nesting: refused before the parser (quadratic in depth) sees it.
  const std::string parens = std::string(5000, '(');
  auto nested = JinjaChatTemplate::Create("{{ " + parens + "1" + std::string(5000, ')') + " }}", "x.jinja", {});
  ASSERT_FALSE(nested.ok());
  EXPECT_NE(nested.status().message().find("x.jinja: brackets or blocks nested 5002 deep"), std::string::npos)
      << nested.status();
  std::string ifs;
  for (int i = 0; i < 300; ++i) ifs += "{% if true %}";
  EXPECT_FALSE(JinjaChatTemplate::Create(ifs, "x.jinja", {}).ok());
  // An end tag of a block not counted (endset) does not hide the nesting.
  std::string hidden;
  for (int i = 0; i < 300; ++i) hidden += "{% if true %}{% set x %}y{% endset %}";
  EXPECT_FALSE(JinjaChatTemplate::Create(hidden, "x.jinja", {}).ok());
  EXPECT_FALSE(JinjaChatTemplate::Create(std::string(kMaxChatTemplateBytes + 1, 'a'), "x.jinja", {}).ok());
  // Parse errors name the file and where.
  auto unclosed = JinjaChatTemplate::Create("{% if x %}never closed", "x.jinja", {});
  ASSERT_FALSE(unclosed.ok());
  EXPECT_NE(unclosed.status().message().find("x.jinja: not a Jinja template"), std::string::npos) << unclosed.status();
  EXPECT_NE(unclosed.status().message().find("row 1"), std::string::npos) << unclosed.status();
}

}  // namespace
}  // namespace glmserve::tokenizer
