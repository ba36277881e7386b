// glmload's statistics on known numbers, and its flag parsing.
#include "bench/glmload_stats.h"

#include <gtest/gtest.h>

#include <numeric>

#include "bench/glmload.h"
#include "nlohmann/json.hpp"

namespace glmserve::load {
namespace {

TEST(PercentileTest, NearestRankOnOneToHundred) {
  std::vector<double> v(100);
  std::iota(v.begin(), v.end(), 1.0);  // 1..100
  std::reverse(v.begin(), v.end());    // order does not matter
  EXPECT_EQ(Percentile(v, 50), 50);
  EXPECT_EQ(Percentile(v, 90), 90);
  EXPECT_EQ(Percentile(v, 99), 99);
  EXPECT_EQ(Percentile(v, 99.5), 100);
  EXPECT_EQ(Percentile(v, 100), 100);
  EXPECT_EQ(Percentile(v, 0), 1);
  EXPECT_EQ(Percentile(v, 0.5), 1);
  EXPECT_EQ(Percentile(v, 1), 1);
  EXPECT_EQ(Percentile(v, 1.01), 2);
}

TEST(PercentileTest, NearestRankOnSmallSets) {
  // Wikipedia's nearest-rank example: {15, 20, 35, 40, 50}.
  const std::vector<double> v = {50, 15, 40, 20, 35};
  EXPECT_EQ(Percentile(v, 5), 15);
  EXPECT_EQ(Percentile(v, 30), 20);
  EXPECT_EQ(Percentile(v, 40), 20);
  EXPECT_EQ(Percentile(v, 50), 35);
  EXPECT_EQ(Percentile(v, 100), 50);
  // Ten latencies: p90 is the 9th, p99 the 10th (never interpolated between them).
  const std::vector<double> ten = {10, 20, 30, 40, 50, 60, 70, 80, 90, 1000};
  EXPECT_EQ(Percentile(ten, 90), 90);
  EXPECT_EQ(Percentile(ten, 99), 1000);
  EXPECT_EQ(Percentile(ten, 50), 50);
  EXPECT_EQ(Percentile({7.5}, 99), 7.5);
  EXPECT_EQ(Percentile({}, 50), 0);
}

TEST(PercentileTest, Summary) {
  std::vector<double> v;
  for (int i = 1000; i >= 1; --i) v.push_back(i * 0.5);  // 0.5 .. 500
  const Summary s = Summarize(v);
  EXPECT_EQ(s.count, 1000u);
  EXPECT_DOUBLE_EQ(s.min, 0.5);
  EXPECT_DOUBLE_EQ(s.max, 500);
  EXPECT_DOUBLE_EQ(s.mean, 250.25);
  EXPECT_DOUBLE_EQ(s.p50, 250);
  EXPECT_DOUBLE_EQ(s.p90, 450);
  EXPECT_DOUBLE_EQ(s.p99, 495);
  const Summary e = Summarize({});
  EXPECT_EQ(e.count, 0u);
  EXPECT_EQ(e.p99, 0);
}

TEST(PoissonArrivalsTest, SeededAndMeanGapIsOneOverRate) {
  PoissonArrivals a(200, 42), b(200, 42), c(200, 43);
  double sum = 0;
  bool differs = false;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double g = a.NextGapSeconds();
    EXPECT_EQ(g, b.NextGapSeconds());
    differs |= g != c.NextGapSeconds();
    EXPECT_GE(g, 0);
    sum += g;
  }
  EXPECT_TRUE(differs);
  EXPECT_NEAR(sum / n, 1.0 / 200, 0.05 / 200);
}

std::vector<char*> Argv(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (auto& a : args) out.push_back(a.data());
  return out;
}

TEST(FlagsTest, ParsesEveryForm) {
  std::vector<std::string> args = {"glmload",          "--target", "10.0.0.1:9",   "--sweep=1,2,4",
                                   "--duration",       "500ms",    "--prompt-len", "uniform:8:64",
                                   "--max-new-tokens", "fixed:16", "--stream",     "--deadline-ms=250",
                                   "--json-out",       "x.json",   "--seed",       "7"};
  auto argv = Argv(args);
  auto o = ParseFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->target, "10.0.0.1:9");
  EXPECT_EQ(o->sweep, (std::vector<int>{1, 2, 4}));
  EXPECT_DOUBLE_EQ(o->duration_s, 0.5);
  EXPECT_EQ(o->prompt_len.lo, 8);
  EXPECT_EQ(o->prompt_len.hi, 64);
  EXPECT_EQ(o->max_new_tokens.lo, 16);
  EXPECT_EQ(o->max_new_tokens.hi, 16);
  EXPECT_TRUE(o->stream);
  EXPECT_EQ(o->deadline_ms, 250);
  EXPECT_EQ(o->json_out, "x.json");
  EXPECT_EQ(o->seed, 7u);

  std::vector<std::string> defaults = {"glmload"};
  auto dargv = Argv(defaults);
  auto d = ParseFlags(1, dargv.data());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->target, "127.0.0.1:50051");  // loopback unless told otherwise
}

TEST(FlagsTest, SamplingPenaltiesAndHttp) {
  std::vector<std::string> args = {"glmload",
                                   "--top-p",
                                   "0.85",
                                   "--frequency-penalty=0.2",
                                   "--presence-penalty",
                                   "-1.5",
                                   "--repetition-penalty",
                                   "1.1",
                                   "--http",
                                   "--vocab-size",
                                   "1024",
                                   "--target",
                                   "h:8000"};
  auto argv = Argv(args);
  auto o = ParseFlags(static_cast<int>(argv.size()), argv.data());
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_FLOAT_EQ(o->top_p, 0.85f);
  EXPECT_FLOAT_EQ(o->frequency_penalty, 0.2f);
  EXPECT_FLOAT_EQ(o->presence_penalty, -1.5f);
  EXPECT_FLOAT_EQ(o->repetition_penalty, 1.1f);
  EXPECT_TRUE(o->http);
  EXPECT_FALSE(o->stream);

  std::vector<std::string> defaults = {"glmload"};
  auto dargv = Argv(defaults);
  auto d = ParseFlags(1, dargv.data());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->top_p, 0.0f);  // not sent
  EXPECT_EQ(d->frequency_penalty, 0.0f);
  EXPECT_EQ(d->presence_penalty, 0.0f);
  EXPECT_EQ(d->repetition_penalty, 0.0f);  // not sent
  EXPECT_FALSE(d->http);

  // Each bad value names its flag and the range.
  const std::vector<std::pair<std::vector<std::string>, std::string>> bad = {
      {{"glmload", "--top-p", "0"}, "--top-p: '0' is not a number in (0, 1]"},
      {{"glmload", "--top-p", "1.01"}, "--top-p: '1.01' is not a number in (0, 1]"},
      {{"glmload", "--frequency-penalty", "-2.5"}, "--frequency-penalty: '-2.5' is not a number in [-2, 2]"},
      {{"glmload", "--presence-penalty", "inf"}, "--presence-penalty: 'inf' is not a number in [-2, 2]"},
      {{"glmload", "--repetition-penalty", "0"}, "--repetition-penalty: '0' is not a number in (0, 10]"},
      {{"glmload", "--repetition-penalty", "10.5"}, "--repetition-penalty: '10.5' is not a number in (0, 10]"},
      {{"glmload", "--http"}, "--http: the HTTP API does not report the vocabulary size"},
  };
  for (auto [a, want] : bad) {
    auto av = Argv(a);
    auto r = ParseFlags(static_cast<int>(av.size()), av.data());
    ASSERT_FALSE(r.ok()) << a[1];
    EXPECT_NE(std::string(r.status().message()).find(want), std::string::npos) << r.status();
  }
  // --http with prompts from a file needs no --vocab-size.
  std::vector<std::string> file = {"glmload", "--http", "--prompt-file", "p.txt"};
  auto fargv = Argv(file);
  EXPECT_TRUE(ParseFlags(static_cast<int>(fargv.size()), fargv.data()).ok());
  EXPECT_NE(Usage().find("--repetition-penalty"), std::string::npos);
  EXPECT_NE(Usage().find("--http"), std::string::npos);
}

TEST(SseTest, ParsesCompletionChunks) {
  SseEvent done = ParseSseData("[DONE]");
  EXPECT_TRUE(done.done);
  SseEvent text = ParseSseData(
      R"({"id":"c","object":"text_completion","choices":[{"index":0,"text":"ab","logprobs":null,"finish_reason":null}]})");
  EXPECT_EQ(text.tokens, 1);
  EXPECT_FALSE(text.finished);
  EXPECT_EQ(text.completion_tokens, -1);
  SseEvent empty = ParseSseData(R"({"choices":[{"index":0,"text":"","finish_reason":"length"}]})");
  EXPECT_EQ(empty.tokens, 0);
  EXPECT_TRUE(empty.finished);
  SseEvent ids = ParseSseData(R"({"choices":[{"index":0,"text":"","token_ids":[5,6,7]}]})");
  EXPECT_EQ(ids.tokens, 3);
  EXPECT_TRUE(ids.has_token_ids);
  EXPECT_FALSE(text.has_token_ids);
  // A held-back text's flush with its (no) ids: none, though it has text.
  SseEvent flush = ParseSseData(R"({"choices":[{"index":0,"text":"\ufffd","token_ids":[]}]})");
  EXPECT_EQ(flush.tokens, 0);
  EXPECT_TRUE(flush.has_token_ids);
  SseEvent chat = ParseSseData(R"({"choices":[{"index":0,"delta":{"content":"x"}}]})");
  EXPECT_EQ(chat.tokens, 1);
  SseEvent usage = ParseSseData(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":6,"total_tokens":9}})");
  EXPECT_EQ(usage.completion_tokens, 6);
  EXPECT_EQ(usage.tokens, 0);
  SseEvent error =
      ParseSseData(R"({"error":{"message":"m","type":"timeout_error","param":"timeout","code":"deadline_exceeded"}})");
  EXPECT_EQ(error.error, "deadline_exceeded");
  EXPECT_TRUE(ParseSseData("{not json").malformed);
  EXPECT_TRUE(ParseSseData("[1]").malformed);
}

TEST(FlagsTest, RejectsBadInput) {
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"glmload", "--rate", "10", "--concurrency", "2"},
                                             {"glmload", "--sweep", "1,x"},
                                             {"glmload", "--prompt-len", "uniform:9:3"},
                                             {"glmload", "--duration", "-1"},
                                             {"glmload", "--bogus", "1"},
                                             {"glmload", "--concurrency"}}) {
    auto argv = Argv(args);
    EXPECT_FALSE(ParseFlags(static_cast<int>(argv.size()), argv.data()).ok()) << args[1];
  }
  // Loads the server refuses request by request, and outputs that cannot be written: refused
  // before the run, naming the flag.
  const std::vector<std::pair<std::vector<std::string>, std::string>> refused = {
      {{"glmload", "--prompt-len", "0"}, "--prompt-len"},
      {{"glmload", "--max-new-tokens", "uniform:0:4"}, "--max-new-tokens"},
      {{"glmload", "--shared-prefix-len", "100", "--prompt-len", "8"},
       "--shared-prefix-len: 100 is longer than the shortest --prompt-len prompt (8 tokens)"},
      {{"glmload", "--json-out", "/nonexistent-dir/x.json"}, "--json-out: '/nonexistent-dir/x.json'"},
      {{"glmload", "--plot", "/nonexistent-dir/p.png"}, "--plot: '/nonexistent-dir/p.png'"},
  };
  for (auto [args, want] : refused) {
    auto argv = Argv(args);
    auto r = ParseFlags(static_cast<int>(argv.size()), argv.data());
    ASSERT_FALSE(r.ok()) << args[1];
    EXPECT_NE(std::string(r.status().message()).find(want), std::string::npos) << r.status();
  }
}

TEST(ReportTest, JsonRoundTripAndMarkdown) {
  Report r;
  r.options.sweep = {1, 2};
  for (int c : {1, 2}) {
    LevelResult l;
    l.mode = "closed";
    l.concurrency = c;
    l.ok = 10 * c;
    l.requests_per_s = 5.0 * c;
    l.latency_ms = Summarize({1, 2, 3});
    l.errors["UNAVAILABLE"] = c;
    r.levels.push_back(l);
  }
  // top_p and repetition_penalty not sent: null in the JSON, not a 0 no server takes.
  const nlohmann::json written = nlohmann::json::parse(ToJson(r));
  EXPECT_TRUE(written["config"]["top_p"].is_null()) << written["config"];
  EXPECT_TRUE(written["config"]["repetition_penalty"].is_null()) << written["config"];
  auto back = FromJson(ToJson(r));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->levels.size(), 2u);
  EXPECT_EQ(back->levels[1].ok, 20);
  EXPECT_EQ(back->levels[1].errors.at("UNAVAILABLE"), 2);
  EXPECT_DOUBLE_EQ(back->levels[1].latency_ms.p50, 2);
  Report faster = *back;
  for (auto& l : faster.levels) l.requests_per_s *= 3;
  const std::string md = CompareMarkdown({*back, faster}, {"off", "on"});
  EXPECT_NE(md.find("| concurrency |"), std::string::npos) << md;
  EXPECT_NE(md.find("3.00x"), std::string::npos) << md;
  // An open-loop run is compared by its arrival rate (its concurrency is 0): a row per rate, not
  // one "0" row that every rate fell into.
  Report open = *back;
  for (size_t i = 0; i < open.levels.size(); ++i) {
    open.levels[i].mode = "open";
    open.levels[i].concurrency = 0;
    open.levels[i].rate = 5.0 * static_cast<double>(i + 1);
  }
  const std::string open_md = CompareMarkdown({open}, {"rates"});
  EXPECT_NE(open_md.find("| level |"), std::string::npos) << open_md;
  EXPECT_NE(open_md.find("| 5 requests/s |"), std::string::npos) << open_md;
  EXPECT_NE(open_md.find("| 10 requests/s |"), std::string::npos) << open_md;
}

}  // namespace
}  // namespace glmserve::load
