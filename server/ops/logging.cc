#include "server/ops/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "runtime/json_util.h"
#include "runtime/printable_text.h"

namespace glmserve {
namespace {

std::atomic<bool> g_json{false};
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
    auto l = std::make_shared<spdlog::logger>("glmserve", sink);
    l->set_pattern("%v");  // the line is formatted here, so both formats share one sink
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::trace);
    return l;
  }();
  return *logger;
}

spdlog::level::level_enum ToSpd(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

std::string NowRfc3339() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(ms));
}

}  // namespace

absl::Status ConfigureLogging(const std::string& level, const std::string& format) {
  LogLevel l;
  if (level == "debug") {
    l = LogLevel::kDebug;
  } else if (level == "info") {
    l = LogLevel::kInfo;
  } else if (level == "warn") {
    l = LogLevel::kWarn;
  } else if (level == "error") {
    l = LogLevel::kError;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--log-level: '", level, "' is not debug|info|warn|error"));
  }
  if (format != "json" && format != "text") {
    return absl::InvalidArgumentError(absl::StrCat("--log-format: '", format, "' is not json|text"));
  }
  g_level = static_cast<int>(l);
  g_json = format == "json";
  return absl::OkStatus();
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

namespace {

void Emit(LogLevel level, std::string_view event, std::string_view request_id, std::string_view msg,
          const nlohmann::json& fields, bool text_fields = true) {
  std::string line;
  if (g_json) {
    nlohmann::json j = nlohmann::json::object();
    j["time"] = NowRfc3339();
    j["level"] = LevelName(level);
    j["request_id"] = std::string(request_id);
    j["event"] = std::string(event);
    j["msg"] = std::string(msg);
    j["fields"] = fields.is_object() ? fields : nlohmann::json::object();
    line = JsonDump(j);
  } else {
    line = absl::StrCat("glmserve: ", std::string(msg.empty() ? event : msg));
    if (!request_id.empty()) absl::StrAppend(&line, " request_id=", std::string(request_id));
    if (text_fields && fields.is_object()) {
      for (auto it = fields.begin(); it != fields.end(); ++it) {
        // Escaped (runtime/printable_text.h), so that a client's value (a chat role with a newline
        // in it, quoted in a refusal) cannot start a line of its own that reads as the server's.
        const std::string v = PrintableText(it->is_string() ? it->get<std::string>() : JsonDump(*it));
        const bool quote = v.find(' ') != std::string::npos;
        absl::StrAppend(&line, " ", it.key(), "=", quote ? "\"" : "", v, quote ? "\"" : "");
      }
    }
  }
  Logger().log(ToSpd(level), line);
}

}  // namespace

void LogEvent(LogLevel level, std::string_view event, std::string_view request_id, std::string_view msg,
              const nlohmann::json& fields) {
  if (LogEnabled(level)) Emit(level, event, request_id, msg, fields);
}

void LogLifecycle(std::string_view event, std::string_view msg, const nlohmann::json& fields) {
  Emit(LogLevel::kInfo, event, "", msg, fields, /*text_fields=*/false);  // the exact text line
}

}  // namespace glmserve
