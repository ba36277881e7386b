// Reading the tensors of a listed checkpoint into LibTorch (include only from LibTorch TUs).
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/checkpoint.h"

namespace glmserve {

// Reads every tensor of `listing` into CPU tensors keeping the stored dtype (F32, F16, BF16).
// Never throws: torch/zip/pickle failures become a status naming the file.
absl::StatusOr<std::unordered_map<std::string, at::Tensor>> ReadCheckpointTensors(const CheckpointListing& listing);

}  // namespace glmserve
