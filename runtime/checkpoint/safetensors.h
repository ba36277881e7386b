// Parsing the header of a .safetensors file (LibTorch-free). Used by ListCheckpoint.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "runtime/checkpoint/tensor_record.h"

namespace glmserve {

// Bytes per element of a safetensors dtype string ("F32" -> 4, "BF16" -> 2, "I8" -> 1, ...);
// 0 when the spelling is unknown (or sub-byte, like F4), in which case sizes are not checked.
uint64_t SafetensorsDtypeSize(const std::string& dtype);

// Lists the tensors of the safetensors file `path`; `file_name` (relative to the checkpoint
// directory) is used in messages and in TensorRecord::file. Never throws and never reads outside
// the file. Every problem found is appended to `problems` (one line each, naming the file and the
// key where relevant); tensors whose entry is malformed or whose data lies outside the file are not
// listed (their names go to `refused_keys`, so that they are not also called missing), the others
// are appended to `tensors` in data-offset order (data_offset is absolute).
// Returns false when the file could not be read at all (missing, unreadable, corrupt header).
bool ListSafetensorsFile(const std::string& path, const std::string& file_name, std::vector<TensorRecord>* tensors,
                         std::vector<std::string>* problems, std::set<std::string>* refused_keys);

}  // namespace glmserve
