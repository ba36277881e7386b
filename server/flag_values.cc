#include "server/flag_values.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace glmserve {

absl::Status ParseIntFlag(const std::string& flag, const std::string& text, int64_t lo, int64_t hi, int64_t* out) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' is not an integer in [", lo, ", ", hi, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

absl::Status ParseNumberFlag(const std::string& flag, const std::string& text, double lo, double hi, double* out) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno != 0 || !std::isfinite(v) || v < lo || v > hi) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' is not a number in [", lo, ", ", hi, "]"));
  }
  *out = v;
  return absl::OkStatus();
}

}  // namespace glmserve
