// Reading torch.save zip archives (pytorch_model*.bin) through LibTorch's unpickler: a format
// reader, below checkpoint.cc (which lists through it) and checkpoint_tensors.cc (which reads
// through it). The header itself is LibTorch-free (at::Tensor is only declared).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "runtime/checkpoint/tensor_record.h"

namespace at {
class Tensor;
}  // namespace at

namespace glmserve {

// Lists one .bin file: appends its tensors (dtype in safetensors spelling, data_offset/bytes 0)
// and returns true, or appends one problem naming `file_name` and returns false.
// Loading a .bin needs all of it in memory; the loaded tensors are kept in a
// process-level cache keyed by path (and size/mtime) so that ReadCheckpointTensors does not load
// the file a second time.
bool ListPytorchBinFile(const std::string& path, const std::string& file_name, std::vector<TensorRecord>* tensors,
                        std::vector<std::string>* problems);

// Moves the tensors of `path` into `out` (key -> tensor as stored, possibly non-contiguous views
// sharing storage), taking them from the cache when present (and dropping the cache entry) or
// loading the file otherwise. Never throws: errors are statuses naming `file_name`.
absl::Status TakePytorchBinTensors(const std::string& path, const std::string& file_name,
                                   std::unordered_map<std::string, at::Tensor>* out);

// Drops every cached .bin (e.g. after a listing that will not be read).
void ClearPytorchBinCache();

}  // namespace glmserve
