// A checkpoint directory read as far as it can be without tensor data: config, listing and the
// weight plan, with every problem gathered. `inspect` reports it; ModelRunner::Load reads the
// tensors it names. LibTorch-free header.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/weight_map.h"
#include "runtime/generation.h"
#include "runtime/inspect.h"

namespace glmserve {

struct CheckpointPlan {
  ModelConfig config;
  CheckpointListing listing;
  WeightPlan plan;
  bool missing = false;  // no weight files at all (NOT_FOUND from ListCheckpoint)
};

// The report of InspectCheckpoint; `plan` is filled when the config and the listing were read.
// NOT_FOUND only when `directory` is not a directory.
absl::StatusOr<InspectReport> PlanCheckpoint(const std::string& directory, CheckpointPlan* plan);

// The ModelInfo fields that come from config.json.
ModelInfo DescribeModel(const std::string& directory, const ModelConfig& config);

}  // namespace glmserve
