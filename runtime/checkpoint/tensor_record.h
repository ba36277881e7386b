// One tensor as a checkpoint file stores it: what the format readers (safetensors.h,
// pytorch_bin.h) produce and checkpoint.h collects. Its own header so that the readers sit below
// the checkpoint listing and never include it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace glmserve {

struct TensorRecord {
  std::string name;   // key exactly as stored (before any remapping)
  std::string file;   // file name relative to the checkpoint directory
  std::string dtype;  // safetensors spelling: "F32", "F16", "BF16", "F64", "I8", ...
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // safetensors: absolute byte offset of the data in `file`
  uint64_t data_bytes = 0;   // safetensors: byte length of the data
};

}  // namespace glmserve
