// nlohmann::json's exception text as a user reads it: what() begins with the library's own id
// ("[json.exception.parse_error.101] "), which names nothing in the user's file or request.
// Header-only: the checkpoint reader and the HTTP front end share it without a library between them.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace glmserve {

// e.what() without the "[json.exception.<kind>.<id>] " prefix.
inline std::string JsonErrorText(const nlohmann::json::exception& e) {
  std::string what = e.what();
  const size_t at = what.find("] ");
  return what.rfind("[json.exception.", 0) == 0 && at != std::string::npos ? what.substr(at + 2) : what;
}

}  // namespace glmserve
