// nlohmann::json's exception text as a user reads it: what() begins with the library's own id
// ("[json.exception.parse_error.101] "), which names nothing in the user's file or request.
// Header-only: the checkpoint reader and the HTTP front end share it without a library between them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/shown_value.h"

namespace glmserve {

// e.what() without the "[json.exception.<kind>.<id>] " prefix, and the text the parser quotes as
// "last read" cut short (an unterminated string quoted a whole 4 MiB prompt into the refusal and
// the log line).
inline std::string JsonErrorText(const nlohmann::json::exception& e) {
  std::string what = e.what();
  const size_t at = what.find("] ");
  if (what.rfind("[json.exception.", 0) == 0 && at != std::string::npos) what = what.substr(at + 2);
  static constexpr char kLastRead[] = "; last read: '";
  const size_t quoted = what.find(kLastRead);
  if (quoted != std::string::npos) {
    const size_t from = quoted + sizeof(kLastRead) - 1;
    const size_t to = what.size() > from && what.back() == '\'' ? what.size() - 1 : what.size();
    what = absl::StrCat(what.substr(0, from), ShownValue(what.substr(from, to - from)), "'");
  }
  return what;
}

}  // namespace glmserve
