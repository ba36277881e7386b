// What `glmserve inspect` reports about a checkpoint directory. LibTorch-free header.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/generation.h"

namespace glmserve {

struct InspectReport {
  ModelInfo info;                     // filled as far as the config and listing allow
  std::vector<std::string> mapping;   // key mapping applied (see weight_map.h)
  std::vector<std::string> problems;  // every validation problem; empty = loadable
  bool loadable() const { return problems.empty(); }
};

// Validates `directory` without reading tensor data (except .bin archives, which must be
// unpickled to be listed). Errors only when the directory itself is unusable (NOT_FOUND).
absl::StatusOr<InspectReport> InspectCheckpoint(const std::string& directory);

}  // namespace glmserve
