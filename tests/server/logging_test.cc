// The structured logger (server/ops/logging.h): what a client puts in a logged value stays inside
// its field on text lines, and JSON lines stay one object each. The sampler that keeps a flood of
// like lines to a few a second (server/ops/log_sampler.h).
#include "server/ops/logging.h"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "server/ops/log_sampler.h"

namespace glmserve {
namespace {

std::string Logged(const std::string& format, const nlohmann::json& fields) {
  EXPECT_TRUE(ConfigureLogging("info", format).ok());
  ::testing::internal::CaptureStderr();
  LogEvent(LogLevel::kInfo, "request_refused", "r-1", "request refused", fields);
  return ::testing::internal::GetCapturedStderr();
}

// A chat role "x\nglmserve: serving on ..." quoted in a refusal forged a line of its own.
TEST(Logging, TextFieldsCannotStartALine) {
  const std::string line =
      Logged("text", {{"message", "role 'x\nglmserve: forged line\r\tend\x01'"}, {"rpc", "Infer"}});
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;  // one line: the only newline ends it
  EXPECT_EQ(line.find('\r'), std::string::npos) << line;
  EXPECT_NE(line.find("x\\nglmserve: forged line\\r\\tend\\x01"), std::string::npos) << line;
  EXPECT_NE(line.find("rpc=Infer"), std::string::npos) << line;
}

// A client's bytes that are not UTF-8, as a string or inside a list, print escaped: a list's
// JSON used to be written by a dump that throws on them.
TEST(Logging, TextFieldsEscapeBytesThatAreNotUtf8) {
  const std::string line = Logged("text", {{"role", "a\xff"}, {"stop", nlohmann::json::array({"b\xfe"})}});
  ASSERT_FALSE(line.empty());
  EXPECT_NE(line.find("role=a\\xff"), std::string::npos) << line;
  EXPECT_NE(line.find("stop=[\"b\xef\xbf\xbd\"]"), std::string::npos) << line;  // U+FFFD in its place
}

TEST(Logging, JsonLinesKeepTheValueWhole) {
  const std::string line = Logged("json", {{"message", "a\nb"}});
  ASSERT_FALSE(line.empty());
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["fields"]["message"], "a\nb");
  EXPECT_EQ(j["event"], "request_refused");
}

// 3 lines a second: a burst of 10 writes 3 and leaves 7 out; the first line of the next second
// says so; a line 999 ms after a window's first is still in it.
TEST(LogSampler, WritesTheFirstLinesOfEachSecondAndCountsTheRest) {
  using std::chrono::milliseconds;
  LogSampler sampler(3);
  const LogSampler::Clock::time_point t0{};
  int64_t left_out = -1;
  int written = 0;
  for (int i = 0; i < 10; ++i) {
    if (sampler.Admit(t0 + milliseconds(i), &left_out)) {
      ++written;
      EXPECT_EQ(left_out, 0);
    }
  }
  EXPECT_EQ(written, 3);
  EXPECT_FALSE(sampler.Admit(t0 + milliseconds(999), &left_out));
  ASSERT_TRUE(sampler.Admit(t0 + milliseconds(1000), &left_out));
  EXPECT_EQ(left_out, 8);
  EXPECT_TRUE(sampler.Admit(t0 + milliseconds(1500), &left_out));
  EXPECT_EQ(left_out, 0);
  EXPECT_TRUE(sampler.Admit(t0 + milliseconds(1999), &left_out));
  EXPECT_FALSE(sampler.Admit(t0 + milliseconds(1999), &left_out));
  EXPECT_EQ(sampler.TakeLeftOut(), 1);
  EXPECT_EQ(sampler.TakeLeftOut(), 0);
  // After a quiet spell a new window starts at the next line, whenever it comes.
  EXPECT_TRUE(sampler.Admit(t0 + milliseconds(60'000), &left_out));
  EXPECT_EQ(left_out, 0);
}

TEST(LogSampler, ZeroWritesEveryLine) {
  LogSampler sampler(0);
  int64_t left_out = -1;
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(sampler.Admit(LogSampler::Clock::time_point{}, &left_out));
  EXPECT_EQ(left_out, 0);
  EXPECT_EQ(sampler.TakeLeftOut(), 0);
}

}  // namespace
}  // namespace glmserve
