// Parity of glmserve_tokenizer with the reference libraries (HF tokenizers + transformers,
// tiktoken, sentencepiece) on tests/fixtures/tokenizer (scripts/make_tokenizer_fixtures.py).
#include "runtime/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/tokenizer/pretokenizer.h"
#include "runtime/tokenizer/stream_decoder.h"
#include "runtime/tokenizer/text_output.h"

namespace glmserve::tokenizer {
namespace {

using json = nlohmann::json;

const std::string kFixtures = std::string(GLMSERVE_FIXTURES_DIR) + "/tokenizer";

json ReadJson(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

struct Format {
  std::string name;  // key in expected.json
  std::string dir;
  std::string format;  // Tokenizer::format()
};

void PrintTo(const Format& f, std::ostream* os) { *os << f.name; }

std::vector<Format> Formats() {
  return {{"glm4-tiny", std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny", "tokenizer.json"},
          {"glm4-hf", kFixtures + "/glm4-hf", "tokenizer.json"},
          {"glm4-tiktoken", kFixtures + "/glm4-tiktoken", "tiktoken"},
          {"chatglm3-sp", kFixtures + "/chatglm3-sp", "sentencepiece"}};
}

class ParityTest : public ::testing::TestWithParam<Format> {
 protected:
  void SetUp() override {
    corpus_ = ReadJson(kFixtures + "/corpus.json").get<std::vector<std::string>>();
    conversations_ = ReadJson(kFixtures + "/conversations.json");
    expected_ = ReadJson(kFixtures + "/expected.json")[GetParam().name];
    auto t = Tokenizer::FromDirectory(GetParam().dir);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  std::vector<std::string> corpus_;
  json conversations_, expected_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(ParityTest, FormatDetected) { EXPECT_EQ(tok_->format(), GetParam().format); }

// Pieces thousands of bytes long (one pre-tokenizer run each): the merge order along a run of equal
// pairs (leftmost first) and the merges of merged parts, against HF tokenizers and tiktoken.
TEST_P(ParityTest, LongRunsIdenticalToReference) {
  if (GetParam().format == "sentencepiece") GTEST_SKIP() << "sentencepiece encodes through its own library";
  const json runs = ReadJson(kFixtures + "/long_runs.json");
  const auto texts = runs["texts"].get<std::vector<std::string>>();
  ASSERT_EQ(runs[GetParam().name].size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(tok_->Encode(texts[i]), runs[GetParam().name][i].get<std::vector<int32_t>>())
        << "text " << i << " (" << texts[i].size() << " bytes, starting " << texts[i].substr(0, 8) << ")";
  }
}

TEST_P(ParityTest, EncodeIdsIdenticalToReference) {
  int same = 0;
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const auto want = expected_["encode"][i].get<std::vector<int32_t>>();
    const auto got = tok_->Encode(corpus_[i]);
    EXPECT_EQ(got, want) << "line " << i << ": " << corpus_[i];
    same += got == want;
  }
  std::cout << GetParam().name << ": encode parity " << same << "/" << corpus_.size() << "\n";
}

TEST_P(ParityTest, DecodeIdenticalToReference) {
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const auto ids = expected_["encode"][i].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_->Decode(ids), expected_["decode"][i].get<std::string>()) << "line " << i;
  }
}

TEST_P(ParityTest, RoundTrip) {
  for (const std::string& line : corpus_) {
    EXPECT_EQ(tok_->Decode(tok_->Encode(line, /*add_special_tokens=*/false)), line);
  }
}

TEST_P(ParityTest, ChatTemplateIdenticalToReference) {
  ASSERT_EQ(conversations_.size(), expected_["chat"].size());
  for (size_t c = 0; c < conversations_.size(); ++c) {
    std::vector<Message> messages;
    for (const json& m : conversations_[c]) messages.push_back({m["role"], m["content"], {}});
    auto ids = tok_->ApplyChatTemplate(messages, /*add_generation_prompt=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, expected_["chat"][c].get<std::vector<int32_t>>()) << "conversation " << c;
  }
}

TEST_P(ParityTest, StreamingNeverSplitsUtf8) {
  for (size_t i = 0; i < corpus_.size(); ++i) {
    const auto ids = expected_["encode"][i].get<std::vector<int32_t>>();
    StreamDecoder dec(tok_.get());
    std::string all;
    for (int32_t id : ids) {
      const std::string delta = dec.Add(id);
      EXPECT_EQ(SanitizeUtf8(delta), delta) << "line " << i << ": partial UTF-8 in a delta";
      all += delta;
    }
    all += dec.Finish();
    EXPECT_EQ(all, tok_->Decode(ids)) << "line " << i;
  }
}

TEST_P(ParityTest, StopIdsAndSpecials) {
  const auto stop = tok_->DefaultStopIds();
  ASSERT_FALSE(stop.empty());
  EXPECT_EQ(stop[1], *tok_->SpecialTokenId("<|user|>"));
  EXPECT_EQ(stop[2], *tok_->SpecialTokenId("<|observation|>"));
  EXPECT_GT(tok_->vocab_size(), *tok_->SpecialTokenId("<|observation|>"));
}

INSTANTIATE_TEST_SUITE_P(Formats, ParityTest, ::testing::ValuesIn(Formats()), [](const auto& info) {
  std::string n = info.param.name;
  for (char& c : n)
    if (c == '-') c = '_';
  return n;
});

TEST(Tokenizer, BundledModelStopIdsMatchConfig) {
  auto t = Tokenizer::FromDirectory(std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->DefaultStopIds(), (std::vector<int32_t>{1000, 1007, 1009}));
  EXPECT_EQ((*t)->vocab_size(), 1014);
  EXPECT_EQ((*t)->chat_template_source(), "chat_template (recognized GLM-4 template)");
}

TEST(Tokenizer, ByteLevelRoundTripsInvalidUtf8) {
  for (const char* dir : {"/glm4-hf", "/glm4-tiktoken"}) {
    auto t = Tokenizer::FromDirectory(kFixtures + dir);
    ASSERT_TRUE(t.ok()) << t.status();
    const std::string bad = "ok \xff\xfe broken \xc3 and \xe4\xbd tail \xf0\x9f\x98";
    EXPECT_EQ((*t)->DecodeBytes((*t)->Encode(bad, false)), bad) << dir;
    EXPECT_EQ((*t)->Decode((*t)->Encode(bad, false)), SanitizeUtf8(bad));
  }
}

TEST(Tokenizer, MissingDirectory) {
  auto t = Tokenizer::FromDirectory("/nonexistent/dir");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

// A directory `name` under the test's temp dir holding `source`'s tokenizer_config.json; each case
// writes its own tokenizer.json there.
std::string TokenizerVariantDir(const std::string& source, const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(source + "/tokenizer_config.json", dir + "/tokenizer_config.json",
                             std::filesystem::copy_options::overwrite_existing);
  return dir;
}

// tokenizer.json variants where glmserve and tokenizers split differently (expected ids from
// transformers 5.24 / tokenizers 0.23 on the same files): a merge listed twice takes its last rank
// (glmserve kept the first: "int" -> [453]); ByteLevel with use_regex false keeps the text one piece,
// newlines too (RE2's ".+" stopped at each newline: "a\nb" -> [64, 198, 65]).
TEST(Tokenizer, MergeRanksAndUnsplitTextAsTokenizers) {
  const std::string tiny = std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny";
  std::ifstream in(tiny + "/tokenizer.json");
  const nlohmann::json base = nlohmann::json::parse(in);
  const std::string dir = TokenizerVariantDir(tiny, "glmserve_tokenizer_variants");
  auto ids = [&](const nlohmann::json& j, const std::string& text) {
    std::ofstream(dir + "/tokenizer.json") << j.dump();
    auto t = Tokenizer::FromDirectory(dir);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? (*t)->Encode(text, false) : std::vector<int32_t>{};
  };
  nlohmann::json twice = base;
  twice["model"]["merges"].push_back(nlohmann::json::array({"i", "n"}));
  EXPECT_EQ(ids(twice, "int"), (std::vector<int32_t>{72, 283}));
  nlohmann::json unsplit = base;
  unsplit["pre_tokenizer"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  unsplit["model"]["vocab"]["a\u010a"] = 1500;
  unsplit["model"]["merges"].push_back(nlohmann::json::array({"a", "\u010a"}));
  EXPECT_EQ(ids(unsplit, "a\nb"), (std::vector<int32_t>{1500, 65}));
}

// One way to spoil a tokenizer.json, and what the refusal must say.
struct TokenizerCorruption {
  std::string what;
  std::function<void(nlohmann::json&)> corrupt;
  std::string says;
};

// Each corruption of `good`, written to `dir`, is refused INVALID_ARGUMENT saying its `says`, in
// the project's words (no nlohmann exception id).
void ExpectEachRefused(const nlohmann::json& good, const std::string& dir,
                       const std::vector<TokenizerCorruption>& cases) {
  for (const auto& c : cases) {
    nlohmann::json bad = good;
    c.corrupt(bad);
    std::ofstream(dir + "/tokenizer.json") << bad.dump();
    auto t = Tokenizer::FromDirectory(dir);
    ASSERT_FALSE(t.ok()) << c.what;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(t.status().message().find(c.says), std::string::npos) << c.what << ": " << t.status();
    EXPECT_EQ(t.status().message().find("json.exception"), std::string::npos) << c.what << ": " << t.status();
  }
}

// Ids a corrupt tokenizer.json gives are refused naming the entry: the tables indexed by id are
// sized from the largest, and a negative one was written out of bounds (the server crashed after
// "listening on"; an id of 2^31 - 1 or 10^9 aborted allocating the table, 2^40 + 5 became 5).
TEST(Tokenizer, CorruptIdsAreRefusedNamingTheEntry) {
  std::ifstream in(kFixtures + "/glm4-hf/tokenizer.json");
  const nlohmann::json good = nlohmann::json::parse(in);
  const std::string dir = TokenizerVariantDir(kFixtures + "/glm4-hf", "glmserve_corrupt_tokenizer");
  ExpectEachRefused(
      good, dir,
      {
          {"negative added id", [](nlohmann::json& j) { j["added_tokens"][0]["id"] = -5; }, "added_tokens[0].id"},
          {"added id 2^31 - 1", [](nlohmann::json& j) { j["added_tokens"][0]["id"] = 2147483647; },
           "added_tokens[0].id"},
          {"added id 10^9", [](nlohmann::json& j) { j["added_tokens"][0]["id"] = 1000000000; }, "added_tokens[0].id"},
          {"vocab id 2^40 + 5", [](nlohmann::json& j) { j["model"]["vocab"].begin().value() = 1099511627781; },
           "model.vocab '"},
      });
  std::filesystem::remove(dir + "/tokenizer.json");
  std::filesystem::create_symlink("/dev/zero", dir + "/tokenizer.json");
  auto device = Tokenizer::FromDirectory(dir);
  ASSERT_FALSE(device.ok());
  EXPECT_NE(device.status().message().find("not a regular file"), std::string::npos) << device.status();
  std::filesystem::remove_all(dir);
}

// A member tokenizer.json lacks, or holds in another form than tokenizers takes, is refused naming
// its path and what was expected, as tokenizers refuses the file: read unchecked, an absent
// model.merges or model.vocab crashed `inspect` (a read past nlohmann's map with assertions off) or
// loaded a tokenizer with no merges, and a malformed merge was dropped silently.
TEST(Tokenizer, MissingOrMalformedMembersAreRefusedNamingThem) {
  std::ifstream in(kFixtures + "/glm4-hf/tokenizer.json");
  const nlohmann::json good = nlohmann::json::parse(in);
  const std::string dir = TokenizerVariantDir(kFixtures + "/glm4-hf", "glmserve_malformed_tokenizer");
  ExpectEachRefused(
      good, dir,
      {
          {"no vocab", [](nlohmann::json& j) { j["model"].erase("vocab"); }, "model.vocab: expected an object"},
          {"vocab a list",
           [](nlohmann::json& j) {
             j["model"]["vocab"] = {1, 2};
           },
           "model.vocab: expected an object"},
          {"no merges", [](nlohmann::json& j) { j["model"].erase("merges"); }, "model.merges: expected a list"},
          {"merges a number", [](nlohmann::json& j) { j["model"]["merges"] = 5; }, "model.merges: expected a list"},
          {"merge of three",
           [](nlohmann::json& j) {
             j["model"]["merges"][2] = {"a", "b", "c"};
           },
           "model.merges[2]: "},
          {"merge of numbers",
           [](nlohmann::json& j) {
             j["model"]["merges"][1] = {1, 2};
           },
           "model.merges[1]: "},
          {"merge string of three", [](nlohmann::json& j) { j["model"]["merges"][3] = "a b c"; }, "model.merges[3]: "},
          {"merge null", [](nlohmann::json& j) { j["model"]["merges"][0] = nullptr; }, "model.merges[0]: "},
          {"no pretokenizers", [](nlohmann::json& j) { j["pre_tokenizer"].erase("pretokenizers"); },
           "pre_tokenizer.pretokenizers: expected a list"},
          {"pre-tokenizer a number", [](nlohmann::json& j) { j["pre_tokenizer"]["pretokenizers"][0] = 5; },
           "pre_tokenizer step 0: expected an object"},
          {"added token without content", [](nlohmann::json& j) { j["added_tokens"][0].erase("content"); },
           "added_tokens[0].content: expected the token's text, found nothing"},
          {"added tokens an object",
           [](nlohmann::json& j) {
             j["added_tokens"] = {{"a", 1}};
           },
           "added_tokens: expected"},
          {"template without single", [](nlohmann::json& j) { j["post_processor"].erase("single"); },
           "post_processor.single: expected a list"},
          {"template special token undeclared",
           [](nlohmann::json& j) { j["post_processor"]["special_tokens"].clear(); },
           "post_processor.special_tokens['[gMASK]'].ids: expected a list of token ids, found nothing"},
          {"template special id negative",
           [](nlohmann::json& j) { j["post_processor"]["special_tokens"]["<sop>"]["ids"][0] = -1; },
           "post_processor.special_tokens['<sop>'].ids: expected token ids"},
      });
  std::filesystem::remove_all(dir);
}

TEST(Tokenizer, UnknownRoleRejected) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/glm4-hf");
  ASSERT_TRUE(t.ok());
  auto ids = (*t)->ApplyChatTemplate({{"wizard", "hi", {}}});
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("messages[0].role"), std::string::npos);
}

TEST(StreamDecoder, HoldsBackIncompleteCharacter) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/glm4-tiktoken");
  ASSERT_TRUE(t.ok());
  // Single-byte ids for the 4 bytes of U+1F600: nothing comes out until the last byte.
  const std::string emoji = "\xF0\x9F\x98\x80";
  std::vector<int32_t> ids;
  for (unsigned char b : emoji) {
    std::vector<int32_t> one = (*t)->Encode(std::string(1, static_cast<char>(b)), false);
    ASSERT_EQ(one.size(), 1u);
    ids.push_back(one[0]);
  }
  StreamDecoder dec(t->get());
  EXPECT_EQ(dec.Add(ids[0]), "");
  EXPECT_EQ(dec.Add(ids[1]), "");
  EXPECT_EQ(dec.Add(ids[2]), "");
  EXPECT_EQ(dec.Add(ids[3]), emoji);
  // A sequence that can never complete is replaced, not held forever.
  EXPECT_EQ(dec.Add(ids[0]), "");
  EXPECT_EQ(dec.Add((*t)->Encode("a", false)[0]),
            "\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(dec.Add(ids[0]), "");
  EXPECT_EQ(dec.Finish(), "\xEF\xBF\xBD");
}

TEST(Utf8, SanitizeMatchesMaximalSubpart) {
  EXPECT_EQ(SanitizeUtf8("a\xC3"), "a\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xE4\xBD"
                         "b"),
            "\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(SanitizeUtf8("\xFF\xFE"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(CompleteUtf8Prefix("ab\xE4\xBD"), 2u);
  EXPECT_EQ(CompleteUtf8Prefix("ab\xFF"), 3u);
}

TEST(RegexSplitter, EmulatesTrailingLookahead) {
  auto s = RegexSplitter::Create(kGlm4Pattern);
  ASSERT_TRUE(s.ok()) << s.status();
  std::vector<std::string_view> pieces;
  (*s)->Split("a   b\n\n  c  ", &pieces);
  EXPECT_EQ(pieces, (std::vector<std::string_view>{"a", "  ", " b", "\n\n", " ", " c", "  "}));
  pieces.clear();
  (*s)->Split("x\xE3\x80\x80\xE3\x80\x80y", &pieces);  // ideographic spaces are \s
  EXPECT_EQ(pieces, (std::vector<std::string_view>{"x", "\xE3\x80\x80", "\xE3\x80\x80y"}));
}

}  // namespace
}  // namespace glmserve::tokenizer

namespace glmserve::tokenizer {
namespace {

std::unique_ptr<Tokenizer> Tiny() {
  auto t = Tokenizer::FromDirectory(std::string(GLMSERVE_SOURCE_DIR) + "/models/glm4-tiny");
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(*t);
}

// Feeds ids one at a time like the engine does.
std::string Feed(TextOutput* out, const std::vector<int32_t>& ids, size_t* kept) {
  std::string text;
  *kept = 0;
  for (int32_t id : ids) {
    std::string delta;
    *kept += out->Add({id}, &delta);
    EXPECT_EQ(SanitizeUtf8(delta), delta);
    text += delta;
  }
  return text + out->Finish();
}

TEST(TextOutput, NoStopGivesDecodeWithoutSpecials) {
  auto tok = Tiny();
  std::vector<int32_t> ids = tok->Encode("你好 world<|user|>");
  TextOutput out(tok.get(), {});
  size_t kept;
  EXPECT_EQ(Feed(&out, ids, &kept), "你好 world");
  EXPECT_EQ(kept, ids.size());
  EXPECT_FALSE(out.stopped());
  EXPECT_EQ(out.text(), "你好 world");
}

TEST(TextOutput, StopStringEndsTextAndKeepsTheCompletingId) {
  auto tok = Tiny();
  const std::vector<int32_t> ids = tok->Encode("The answer is 42. END of story");
  TextOutput out(tok.get(), {"END", "never"});
  size_t kept;
  EXPECT_EQ(Feed(&out, ids, &kept), "The answer is 42. ");
  EXPECT_TRUE(out.stopped());
  // The kept ids decode to text that contains the stop string; one id fewer does not.
  std::vector<int32_t> prefix(ids.begin(), ids.begin() + kept);
  EXPECT_NE(tok->Decode(prefix).find("END"), std::string::npos);
  prefix.pop_back();
  EXPECT_EQ(tok->Decode(prefix).find("END"), std::string::npos);
  std::string delta;
  EXPECT_EQ(out.Add({ids.back()}, &delta), 0u);
  EXPECT_EQ(delta, "");
}

// Bytes held back at the end of generation (a character cut short) become U+FFFD when flushed; a
// stop string they complete ends the text there as any other.
TEST(TextOutput, StopStringCompletedByTheFinalFlush) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/glm4-tiktoken");
  ASSERT_TRUE(t.ok());
  std::vector<int32_t> ids = (*t)->Encode("a", false);
  const std::vector<int32_t> first_byte = (*t)->Encode("\xF0", false);  // of a 4-byte character
  ASSERT_EQ(first_byte.size(), 1u);
  ids.push_back(first_byte[0]);
  TextOutput out(t->get(), {"\xEF\xBF\xBD"});
  std::string delta;
  EXPECT_EQ(out.Add(ids, &delta), ids.size());
  EXPECT_EQ(delta, "a");
  EXPECT_FALSE(out.stopped());
  EXPECT_EQ(out.Finish(), "");
  EXPECT_TRUE(out.stopped());
  EXPECT_EQ(out.text(), "a");
  // Without the stop string the flushed character is the text's end.
  TextOutput plain(t->get(), {});
  delta.clear();
  plain.Add(ids, &delta);
  EXPECT_EQ(delta + plain.Finish(), "a\xEF\xBF\xBD");
  EXPECT_FALSE(plain.stopped());
}

// The id that ends generation is a delimiter: its text is left out (vLLM's stop_token_ids rule),
// while every other id's text stays and the caller's ids keep it.
TEST(TextOutput, StopIdsGiveNoText) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/glm4-tiktoken");
  ASSERT_TRUE(t.ok());
  const std::vector<int32_t> ids = (*t)->Encode("one two", false);
  ASSERT_GE(ids.size(), 2u);
  TextOutput out(t->get(), {}, {ids.back()});
  std::string delta;
  EXPECT_EQ(out.Add(ids, &delta), ids.size());
  delta += out.Finish();
  EXPECT_EQ(delta, (*t)->Decode(std::vector<int32_t>(ids.begin(), ids.end() - 1)));
  EXPECT_NE(delta, "one two");
}

// min_new_tokens holds stop strings as it holds stop ids (vLLM's min_tokens): they are looked for
// once more than min ids have come, and one the first min ids completed never ends the text.
TEST(TextOutput, StopStringsWaitForMinIds) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/glm4-tiktoken");
  ASSERT_TRUE(t.ok());
  const std::vector<int32_t> first = (*t)->Encode("ab", false), next = (*t)->Encode(" ab", false);
  std::vector<int32_t> ids = first;
  for (int k = 0; k < 2; ++k) ids.insert(ids.end(), next.begin(), next.end());  // "ab ab ab"
  auto run = [&](size_t min_ids) {
    TextOutput out(t->get(), {"ab"}, {}, min_ids);
    std::string delta;
    out.Add(ids, &delta);
    EXPECT_TRUE(out.stopped()) << min_ids;
    return delta;
  };
  EXPECT_EQ(run(0), "");
  EXPECT_EQ(run(first.size()), "ab ");  // the first "ab" is the min ids' own: the second ends it
  EXPECT_EQ(run(first.size() + next.size()), "ab ab ");
  // All ids within the min: no stop string ends the text, not even at the flush.
  TextOutput none(t->get(), {"ab"}, {}, ids.size());
  std::string delta;
  none.Add(ids, &delta);
  delta += none.Finish();
  EXPECT_FALSE(none.stopped());
  EXPECT_EQ(delta, "ab ab ab");
}

TEST(TextOutput, PartialStopPrefixIsHeldBackThenReleased) {
  auto tok = Tiny();
  TextOutput out(tok.get(), {"</stop>"});
  std::string delta;
  for (int32_t id : tok->Encode("a</st")) out.Add({id}, &delta);
  EXPECT_EQ(delta, "a");  // "</st" could still become "</stop>"
  for (int32_t id : tok->Encode("ar")) out.Add({id}, &delta);
  EXPECT_EQ(delta + out.Finish(), "a</star");
}

}  // namespace
}  // namespace glmserve::tokenizer

namespace glmserve::tokenizer {
namespace {

TEST(SentencePiece, SpecialStringsInTextStayText) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/chatglm3-sp");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<int32_t> ids = (*t)->Encode("workshop eop <|user|>", /*add_special_tokens=*/false);
  for (int32_t id : ids) EXPECT_FALSE((*t)->IsSpecial(id)) << id;
  EXPECT_EQ((*t)->Decode(ids), "workshop eop <|user|>");
}

// Sentencepiece's decode gives one U+FFFD per invalid byte (the byte-fallback pieces of a cut-off
// character): sp.decode([<0xE4>, <0xBD>]) is two, [<0xF0>, <0x9F>, <0x98>, <0x41>] three and "A"
// (the values from the sentencepiece package on this fixture). One per invalid sequence is HF
// tokenizers' rule, which the byte-level formats keep. Final text and streamed deltas alike.
TEST(SentencePiece, InvalidBytesBecomeOneReplacementEach) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/chatglm3-sp");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string r = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::vector<int32_t>, std::string>> cases = {
      {{234, 195}, r + r}, {{234, 195, 71}, r + r + "A"}, {{246, 165, 158, 71}, r + r + r + "A"}};
  for (const auto& [ids, want] : cases) {
    EXPECT_EQ((*t)->Decode(ids), want);
    StreamDecoder stream(t->get());
    std::string streamed = stream.Add(ids);
    streamed += stream.Finish();
    EXPECT_EQ(streamed, want);
  }
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98"
                         "A",
                         /*each_byte=*/true),
            r + r + r + "A");
  EXPECT_EQ(SanitizeUtf8("\xF0\x9F\x98"
                         "A"),
            r + "A");
}

// ChatGLM2/3's sentencepiece models add a dummy prefix, and their replies start with it ("▁" "\n"
// ...): the reference decode strips it at the text's start and after each special id. The text
// the server streams must be that decode, one id at a time, with specials kept and dropped.
TEST(SentencePiece, StreamedTextStripsTheDummyPrefixAsTheReference) {
  auto t = Tokenizer::FromDirectory(kFixtures + "/chatglm3-sp-prefix");
  ASSERT_TRUE(t.ok()) << t.status();
  const json expected = ReadJson(kFixtures + "/sp_prefix.json");
  ASSERT_GE(expected["ids"].size(), 10u);
  for (size_t i = 0; i < expected["ids"].size(); ++i) {
    const auto ids = expected["ids"][i].get<std::vector<int32_t>>();
    const std::string want = expected["decode"][i], want_without_specials = expected["decode_skip_special"][i];
    EXPECT_EQ((*t)->Decode(ids), want) << "sequence " << i;
    StreamDecoder kept(t->get()), dropped(t->get(), /*skip_special_tokens=*/true);
    std::string streamed, streamed_without_specials;
    for (int32_t id : ids) {
      streamed += kept.Add(id);
      streamed_without_specials += dropped.Add(id);
    }
    EXPECT_EQ(streamed + kept.Finish(), want) << "sequence " << i;
    EXPECT_EQ(streamed_without_specials + dropped.Finish(), want_without_specials) << "sequence " << i;
  }
}

TEST(Tokenizer, TextPrefixLikeTheReferenceTokenizers) {
  // tokenizer(text) of GLM-4-9B (tiktoken) and ChatGLM3 (sentencepiece) starts with [gMASK] <sop>.
  for (const char* dir : {"/glm4-tiktoken", "/chatglm3-sp"}) {
    auto t = Tokenizer::FromDirectory(kFixtures + dir);
    ASSERT_TRUE(t.ok()) << t.status();
    const auto ids = (*t)->Encode("hi");
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids[0], *(*t)->SpecialTokenId("[gMASK]")) << dir;
    EXPECT_TRUE((*t)->IsSpecial(ids[1])) << dir;
    EXPECT_EQ((*t)->Encode("hi", false), std::vector<int32_t>(ids.begin() + 2, ids.end())) << dir;
  }
}

}  // namespace
}  // namespace glmserve::tokenizer
