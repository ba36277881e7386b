// Flag value parsers shared by the command-line front ends (glmserve serve, glmload): each error
// names the flag and the accepted range, e.g. "--port: '70000' is not an integer in [0, 65535]".
// No LibTorch, no gRPC.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace glmserve {

// A base-10 integer in [lo, hi], the whole text; INVALID_ARGUMENT otherwise.
absl::Status ParseIntFlag(const std::string& flag, const std::string& text, int64_t lo, int64_t hi, int64_t* out);

// A finite number in [lo, hi], the whole text; INVALID_ARGUMENT otherwise.
absl::Status ParseNumberFlag(const std::string& flag, const std::string& text, double lo, double hi, double* out);

}  // namespace glmserve
