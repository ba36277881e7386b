// The inspect/generate contract, checked by running the real glmserve binary.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

// The bundled tiny model (models/glm4-tiny: weights and a tokenizer).
fs::path TinyModel() { return Fixtures().parent_path().parent_path() / "models" / "glm4-tiny"; }

// A fresh copy of the tiny model in the test's temp directory, to break.
fs::path TinyModelCopy(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::copy(TinyModel(), dir);
  return dir;
}

TEST(GenerateCli, JsonOutputMatchesTransformers) {
  for (const char* name : {"glm4-gqa-safetensors", "chatglm3-fp16-bin-sharded"}) {
    const fs::path dir = Fixtures() / "models" / name;
    const json expected = ReadJson(dir / "expected.json");
    ASSERT_FALSE(expected["cases"].empty());
    for (const json& c : expected["cases"]) {
      RunResult r = Glmserve({"generate", "--model", dir.string(), "--input-ids", Join(c["input_ids"]),
                              "--max-new-tokens", std::to_string(c["max_new_tokens"].get<int>()), "--min-new-tokens",
                              std::to_string(c["min_new_tokens"].get<int>()), "--json"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one line of JSON";
      json out = json::parse(r.out);
      EXPECT_EQ(out["output_ids"], c["output_ids"]) << name;
      EXPECT_EQ(out["finish_reason"], c["finish_reason"]) << name;
      ASSERT_EQ(out["first_logits"].size(), c["first_logits"].size());
      for (size_t i = 0; i < out["first_logits"].size(); ++i) {
        const double want = c["first_logits"][i].get<double>();
        EXPECT_NEAR(out["first_logits"][i].get<double>(), want, 1e-5 + 1e-4 * std::abs(want));
      }
    }
  }
}

TEST(GenerateCli, SamplingIsReproducibleWithSeed) {
  const std::string dir = (Fixtures() / "models" / "glm4-gqa-safetensors").string();
  std::vector<std::string> args = {"generate", "--model",       dir,   "--input-ids", "1,2,3", "--max-new-tokens",
                                   "8",        "--temperature", "0.9", "--top-p",     "0.9",   "--top-k",
                                   "50",       "--seed",        "7",   "--json"};
  RunResult a = Glmserve(args), b = Glmserve(args);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_EQ(json::parse(a.out)["output_ids"], json::parse(b.out)["output_ids"]);
}

struct BadInput {
  std::vector<std::string> args;
  std::string must_name;
};

TEST(GenerateCli, BadInputExitsTwoNamingTheFlag) {
  const std::string dir = (Fixtures() / "models" / "glm4-gqa-safetensors").string();
  const std::vector<BadInput> cases = {
      {{"--input-ids", "", "--max-new-tokens", "4"}, "--input-ids"},
      {{"--input-ids", "1,x,3", "--max-new-tokens", "4"}, "--input-ids"},
      {{"--input-ids", "1,2,99999", "--max-new-tokens", "4"}, "--input-ids"},
      {{"--input-ids", "1,-2", "--max-new-tokens", "4"}, "--input-ids"},
      {{"--input-ids", "1,2", "--max-new-tokens", "0"}, "--max-new-tokens"},
      {{"--input-ids", "1,2", "--max-new-tokens", "-3"}, "--max-new-tokens"},
      {{"--input-ids", "1,2", "--max-new-tokens", "ten"}, "--max-new-tokens"},
      {{"--input-ids", "1,2", "--max-new-tokens", "4", "--min-new-tokens", "5"}, "--min-new-tokens"},
      {{"--input-ids", "1,2", "--max-new-tokens", "4", "--temperature", "-1"}, "--temperature"},
      {{"--input-ids", "1,2", "--max-new-tokens", "4", "--top-p", "1.5"}, "--top-p"},
      {{"--input-ids", "1,2", "--max-new-tokens", "4", "--bogus", "1"}, "--bogus"},
      {{"--input-ids", "1,2", "--max-new-tokens", "1000"}, "max position embeddings"},
      {{"--input-ids", "1,2", "--max-new-tokens", "4", "--system", "be brief"}, "--system"},
      {{"--max-new-tokens", "4"}, "--input-ids"},
  };
  for (const BadInput& c : cases) {
    std::vector<std::string> args = {"generate", "--model", dir};
    args.insert(args.end(), c.args.begin(), c.args.end());
    RunResult r = Glmserve(args);
    EXPECT_EQ(r.exit_code, 2) << absl::StrJoin(c.args, " ") << "\n" << r.err;
    EXPECT_NE(r.err.find(c.must_name), std::string::npos) << absl::StrJoin(c.args, " ") << " -> " << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
  RunResult r = Glmserve({"generate", "--input-ids", "1"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--model"), std::string::npos) << r.err;
  // Flags that conflict or are missing read as a bad flag does: the command, then the usage line.
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"generate", "--input-ids", "1"},
        std::vector<std::string>{"generate", "--model", dir, "--input-ids", "1", "--prompt", "x"},
        std::vector<std::string>{"generate", "--model", dir, "--input-ids", "1", "--max-new-tokens", "2",
                                 "--min-new-tokens", "3"},
        std::vector<std::string>{"inspect"}, std::vector<std::string>{"tokenize", "--model", dir}}) {
    RunResult u = Glmserve(args);
    EXPECT_EQ(u.exit_code, 2) << absl::StrJoin(args, " ");
    EXPECT_EQ(u.err.rfind("glmserve " + args[0] + ": ", 0), 0u) << u.err;
    EXPECT_NE(u.err.find("usage: glmserve " + args[0]), std::string::npos) << u.err;
  }
}

TEST(InspectCli, EveryFixtureIsLoadableAndDescribed) {
  for (const auto& entry : fs::directory_iterator(Fixtures() / "models")) {
    json expected = ReadJson(entry.path() / "expected.json");
    RunResult r = Glmserve({"inspect", "--model", entry.path().string(), "--json", "--show-mapping"});
    ASSERT_EQ(r.exit_code, 0) << entry.path() << r.err << r.out;
    json out = json::parse(r.out);
    EXPECT_EQ(out["loadable"], true);
    EXPECT_EQ(out["architecture"], expected["architecture"]);
    EXPECT_EQ(out["format"], expected["format"]);
    EXPECT_EQ(out["dtype"], expected["stored_dtype"]);
    EXPECT_EQ(out["parameter_count"], expected["parameter_count"]);
    EXPECT_FALSE(out["mapping"].empty());
  }
  RunResult text = Glmserve(
      {"inspect", "--model", (Fixtures() / "models" / "chatglm3-fp16-bin-sharded").string(), "--show-mapping"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find(
                "transformer.encoder.layers.0.self_attention.query_key_value.weight -> layers.0.q.weight [rows 0:32], "
                "layers.0.k.weight [rows 32:48], layers.0.v.weight [rows 48:64]"),
            std::string::npos)
      << text.out;
  EXPECT_NE(text.out.find("transformer.rotary_pos_emb.inv_freq -> dropped"), std::string::npos) << text.out;
}

TEST(InspectCli, BrokenCheckpointsExitTwoWithOneReportNamingTheProblem) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(Fixtures() / "broken")) {
    json broken = ReadJson(entry.path() / "broken.json");
    for (const char* command : {"inspect", "generate"}) {
      std::vector<std::string> args = {command, "--model", entry.path().string()};
      if (std::string(command) == "generate") args.insert(args.end(), {"--input-ids", "1,2", "--max-new-tokens", "2"});
      RunResult r = Glmserve(args);
      EXPECT_EQ(r.exit_code, 2) << entry.path() << " " << command << "\n" << r.err;
      EXPECT_TRUE(r.out.empty()) << entry.path() << " printed on stdout: " << r.out;
      for (const json& needle : broken["expect_in_message"]) {
        EXPECT_NE(r.err.find(needle.get<std::string>()), std::string::npos)
            << entry.path() << " " << command << ": report lacks '" << needle.get<std::string>() << "':\n"
            << r.err;
      }
      EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("Exception raised from"), std::string::npos) << "stack trace leaked: " << r.err;
    }
    ++checked;
  }
  EXPECT_GE(checked, 13);
}

// A path that is no checkpoint directory gets the same object, every key present, as the only
// output (it had three keys, and the message went to stderr as well).
TEST(InspectCli, JsonForAMissingDirectoryHasEveryKey) {
  const RunResult good =
      Glmserve({"inspect", "--model", (Fixtures() / "models" / "glm4-gqa-safetensors").string(), "--json"});
  ASSERT_EQ(good.exit_code, 0) << good.err;
  const fs::path missing = fs::path(::testing::TempDir()) / "glmserve_no_such_model_dir";
  const RunResult r = Glmserve({"inspect", "--model", missing.string(), "--json"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "");
  const json report = json::parse(r.out);
  const json good_report = json::parse(good.out);
  for (const auto& [key, value] : good_report.items()) EXPECT_TRUE(report.contains(key)) << key;
  EXPECT_EQ(report["loadable"], false);
  EXPECT_EQ(report["directory"], missing.string());
  ASSERT_EQ(report["problems"].size(), 1u);
  EXPECT_NE(report["problems"][0].get<std::string>().find("does not exist"), std::string::npos) << r.out;
}

// Each bad config field is a problem of its own (they came as one, the lines joined).
TEST(InspectCli, EveryConfigProblemIsOneEntry) {
  const fs::path dir = fs::path(::testing::TempDir()) / "glmserve_many_config_problems";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << R"({"model_type": "glm", "hidden_act": "gelu", "hidden_size": -1,
    "num_attention_heads": 4, "num_key_value_heads": 3})";
  RunResult r = Glmserve({"inspect", "--model", dir.string(), "--json"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  const json report = json::parse(r.out);
  std::vector<std::string> config_problems;
  for (const json& p : report["problems"]) {
    const std::string text = p.get<std::string>();
    EXPECT_EQ(text.find('\n'), std::string::npos) << text;
    if (text.rfind("config.json:", 0) == 0) config_problems.push_back(text);
  }
  EXPECT_EQ(config_problems.size(), 3u) << r.out;
  fs::remove_all(dir);
}

// A config problem does not hide the weights' problems: the weights are checked against the
// config as read while its shapes are sound (a bad hidden_act hid every missing key).
TEST(InspectCli, ConfigAndWeightProblemsInOneReport) {
  const fs::path dir = fs::path(::testing::TempDir()) / "glmserve_config_and_weights";
  fs::remove_all(dir);
  fs::copy(Fixtures() / "models" / "glm4-gqa-safetensors", dir);
  json config = ReadJson(dir / "config.json");
  config["hidden_act"] = "gelu";
  config["num_hidden_layers"] = 3;  // the file holds 2
  std::ofstream(dir / "config.json") << config.dump();
  RunResult r = Glmserve({"inspect", "--model", dir.string(), "--json"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  const std::string problems = json::parse(r.out)["problems"].dump();
  EXPECT_NE(problems.find("field 'hidden_act'"), std::string::npos) << problems;
  EXPECT_NE(problems.find("no tensors for layer(s) 2"), std::string::npos) << problems;
  fs::remove_all(dir);
}

// A damaged tokenizer_config.json is a problem naming it (it was taken as absent: the chat
// template silently became the family's default); a missing one stays optional.
TEST(InspectCli, DamagedTokenizerConfigIsAProblemNamingTheFile) {
  const fs::path dir = TinyModelCopy("glmserve_broken_tokenizer_config");
  fs::remove(dir / "chat_template.jinja");
  std::ofstream(dir / "tokenizer_config.json", std::ios::trunc) << "{\"chat_template\": \"x\",";
  RunResult r = Glmserve({"inspect", "--model", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("tokenizer_config.json: invalid JSON: parse error at line 1"), std::string::npos) << r.err;
  std::ofstream(dir / "tokenizer_config.json", std::ios::trunc) << "[1]";
  r = Glmserve({"inspect", "--model", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("tokenizer_config.json: expected a JSON object, got array"), std::string::npos) << r.err;
  fs::remove(dir / "tokenizer_config.json");
  r = Glmserve({"inspect", "--model", dir.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  fs::remove_all(dir);
}

// Tokenizer files that do not load are a problem of the checkpoint (serve refused no prompt
// before: it started ids-only); the parser's reason is given, and a stray byte in it does not
// abort --json (nlohmann's dump threw on it).
TEST(InspectCli, BrokenTokenizerIsAProblemNamingTheFile) {
  const fs::path dir = TinyModelCopy("glmserve_broken_tokenizer");
  std::ofstream(dir / "tokenizer.json", std::ios::trunc) << "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\xff\": 1}";
  RunResult r = Glmserve({"inspect", "--model", dir.string()});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("tokenizer.json: invalid JSON: parse error at line 1"), std::string::npos) << r.err;
  r = Glmserve({"inspect", "--model", dir.string(), "--json"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  const json report = json::parse(r.out);
  ASSERT_EQ(report["problems"].size(), 1u) << r.out;
  EXPECT_NE(report["problems"][0].get<std::string>().find("tokenizer.json"), std::string::npos) << r.out;
  fs::remove(dir / "tokenizer.json");  // no tokenizer at all: ids only, loadable
  EXPECT_EQ(Glmserve({"inspect", "--model", dir.string()}).exit_code, 0);
  fs::remove_all(dir);
}

// An id the tokenizer gives past config.json's vocab_size is blamed on the flag the prompt came
// from and the tokenizer (it said --input-ids, which was not given).
TEST(GenerateCli, PromptIdsPastTheVocabularyNameThePromptFlag) {
  const fs::path dir = TinyModelCopy("glmserve_big_added_token");
  json tokenizer = ReadJson(dir / "tokenizer.json");
  tokenizer["added_tokens"].push_back({{"id", 999999}, {"content", "<|big|>"}, {"special", true}});
  std::ofstream(dir / "tokenizer.json", std::ios::trunc) << tokenizer.dump();
  RunResult r = Glmserve({"generate", "--model", dir.string(), "--prompt", "<|big|>", "--max-new-tokens", "1"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--prompt: id 999999 at position 0 is outside the vocabulary [0, 1024) (tokenizer.json"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("--input-ids"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

TEST(InspectCli, MissingDirectoryAndUsage) {
  RunResult r = Glmserve({"inspect", "--model", "/nonexistent/model"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  // --json: one object on stdout whatever the path (a script parses it), the exit still 2.
  RunResult as_json = Glmserve({"inspect", "--model", "/nonexistent/model", "--json"});
  EXPECT_EQ(as_json.exit_code, 2);
  const nlohmann::json parsed = nlohmann::json::parse(as_json.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(parsed.is_object()) << as_json.out;
  EXPECT_EQ(parsed.value("loadable", true), false);
  ASSERT_TRUE(parsed["problems"].is_array() && parsed["problems"].size() == 1u) << as_json.out;
  EXPECT_NE(parsed["problems"][0].get<std::string>().find("/nonexistent/model"), std::string::npos) << as_json.out;
  RunResult help = Glmserve({"inspect", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--show-mapping"), std::string::npos);
  RunResult none = Glmserve({});
  EXPECT_EQ(none.exit_code, 2);
}

TEST(TokenizeCli, IdsMatchTheReferenceAndErrorsNameTheFlag) {
  const std::string tiny = TinyModel().string();
  const auto expected = ReadJson(Fixtures() / "tokenizer" / "expected.json");
  const auto corpus = ReadJson(Fixtures() / "tokenizer" / "corpus.json");
  RunResult r = Glmserve({"tokenize", "--model", tiny, "--text", corpus[5].get<std::string>(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto out = nlohmann::json::parse(r.out);
  EXPECT_EQ(out["ids"], expected["glm4-tiny"]["encode"][5]);
  EXPECT_EQ(out["decoded"], corpus[5]);
  r = Glmserve({"tokenize", "--model", tiny, "--text", "a,b"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find(','), std::string::npos);
  r = Glmserve({"tokenize", "--model", tiny});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--text"), std::string::npos) << r.err;
  r = Glmserve({"tokenize", "--model", "/nonexistent", "--text", "x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("/nonexistent: no such directory"), std::string::npos) << r.err;
  r = Glmserve({"generate", "--model", tiny, "--input-ids", "1,2", "--prompt", "x", "--max-new-tokens", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("exactly one"), std::string::npos) << r.err;
}

}  // namespace
