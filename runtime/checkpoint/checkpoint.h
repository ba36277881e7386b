// Discovering and listing the tensors of a checkpoint directory, without interpreting them.
//
// Contract: ListCheckpoint never throws and never aborts, whatever the bytes on disk. File-level
// damage (truncated file, corrupt header, index naming an absent shard, ...) is collected into
// `problems` so that a single report can name every one; an error status is returned only when
// there is nothing to list at all (no directory, no weight files).
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/tensor_record.h"

namespace glmserve {

enum class CheckpointFormat {
  kSafetensors,         // model.safetensors
  kSafetensorsSharded,  // model.safetensors.index.json + shards
  kPytorchBin,          // pytorch_model.bin (torch.save zip)
  kPytorchBinSharded,   // pytorch_model.bin.index.json + shards
};
// "safetensors", "safetensors-sharded", "pytorch-bin", "pytorch-bin-sharded" (inspect --json, ModelInfo).
const char* CheckpointFormatName(CheckpointFormat format);

struct CheckpointListing {
  std::string directory;
  CheckpointFormat format = CheckpointFormat::kSafetensors;
  std::vector<std::string> files;     // weight files actually present and read, in order
  std::vector<TensorRecord> tensors;  // every tensor of every readable file, file order
  // File-level problems, each one line naming the file (and key where relevant) and saying
  // what was expected, e.g. "model-00002-of-00002.safetensors: truncated: header declares
  // 4096 data bytes, file holds 1000".
  std::vector<std::string> problems;
  // Weight files that could not be listed at all (cannot open, permission denied, not a regular
  // file, damaged header, ...), each already one line in `problems`. Their tensors are unknown, so
  // PlanWeights does not also report the keys they may hold as missing: the keys an index assigns
  // to them (`unreadable_keys`), or every key when nothing says what they hold (a single file,
  // or no usable index: `unreadable_keys_unknown`). `unreadable_keys` also holds the tensors a
  // readable file names but could not give (a malformed entry, data outside the file), each
  // reported once as such.
  std::vector<std::string> unreadable_files;
  std::set<std::string> unreadable_keys;
  bool unreadable_keys_unknown = false;
};

// Lists the checkpoint in `directory`. Format preference when several are present, as
// transformers': model.safetensors, model.safetensors.index.json, the one other *.safetensors,
// pytorch_model.bin, pytorch_model.bin.index.json.
absl::StatusOr<CheckpointListing> ListCheckpoint(const std::string& directory);

// OK when `directory` is a directory whose entries can be listed; else NOT_FOUND (missing, or not
// a directory) or PERMISSION_DENIED / FAILED_PRECONDITION naming it and the system's reason (an
// unreadable directory read as empty: "config.json missing", "no weight files").
absl::Status CheckModelDirectory(const std::string& directory);

}  // namespace glmserve
