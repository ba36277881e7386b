// What `glmserve inspect` reports about a checkpoint directory. LibTorch-free header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/generation.h"

namespace glmserve {

struct InspectReport {
  ModelInfo info;                     // filled as far as the config and listing allow
  std::vector<std::string> mapping;   // key mapping applied (see weight_map.h)
  std::vector<std::string> problems;  // the validation problems (the first 200); empty = loadable
  int64_t problems_unlisted = 0;      // problems found past those listed
  bool loadable() const { return problems.empty(); }
  // "N problems" and, when some are not listed, which are: the head of a refusal's message.
  std::string ProblemsHeading() const;
};

// Validates `directory` without reading tensor data (except .bin archives, which must be
// unpickled to be listed). Errors only when the directory itself is unusable (NOT_FOUND).
absl::StatusOr<InspectReport> InspectCheckpoint(const std::string& directory);

}  // namespace glmserve
