// Structured logs through spdlog: one line per event on stderr, either one JSON object per line
// ({"time","level","request_id","event","msg","fields"}) or text ("glmserve: MSG k=v ...").
// Thread-safe. Before ConfigureLogging the format is text at level info.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace glmserve {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// level: debug|info|warn|error; format: json|text. INVALID_ARGUMENT names the bad value.
absl::Status ConfigureLogging(const std::string& level, const std::string& format);
bool LogEnabled(LogLevel level);

// `event` is a stable snake_case name (request_accepted, engine_restarted, ...); `msg` is the
// human sentence (the whole text line when fields are empty); `fields` a JSON object.
void LogEvent(LogLevel level, std::string_view event, std::string_view request_id, std::string_view msg,
              const nlohmann::json& fields = nlohmann::json::object());
// Lifecycle lines scripts wait for ("serving on HOST:PORT"): level info, logged at every
// --log-level.
void LogLifecycle(std::string_view event, std::string_view msg,
                  const nlohmann::json& fields = nlohmann::json::object());

}  // namespace glmserve
