// The structured logger (server/ops/logging.h): what a client puts in a logged value stays inside
// its field on text lines, and JSON lines stay one object each.
#include "server/ops/logging.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

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

}  // namespace
}  // namespace glmserve
