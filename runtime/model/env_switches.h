// The model's measurement and diagnosis switches read from the environment (docs/operations.md,
// "GPU decode switches" and "Profiling a live server"): one parser for all of them, so a bad value
// is named the same way everywhere.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"

namespace glmserve {

// The variable is set to exactly `value`.
inline bool EnvIs(const char* name, const char* value) {
  const char* env = std::getenv(name);
  return env != nullptr && std::strcmp(env, value) == 0;
}

// A switch's integer in [lo, hi]; unset gives `fallback`, a bad value says so on stderr and gives
// `fallback` too.
inline int64_t EnvInt(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  int64_t value = 0;
  if (!absl::SimpleAtoi(env, &value) || value < lo || value > hi) {
    std::fprintf(stderr, "%s: '%s' is not an integer in [%lld, %lld]; using %lld\n", name, env,
                 static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(fallback));
    return fallback;
  }
  return value;
}

}  // namespace glmserve
