// Key remapping and strict validation of a checkpoint against its config. LibTorch-free.
//
// Every checkpoint layout is translated to one canonical set of tensors ("layers.3.q.weight")
// by a table of rules (kKeyRules in weight_map.cc): a stored key pattern, the canonical
// tensor(s) it provides (several = a fused tensor split along dim 0, e.g. query_key_value into
// q, k, v), or a drop rule for derived buffers. Validation walks every stored key once and
// collects every problem before any tensor is read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/model_config.h"

namespace glmserve {

// One canonical tensor and the rows of a stored tensor it comes from.
struct MappedTensor {
  std::string canonical;   // e.g. "layers.0.q.weight"
  std::string source_key;  // the stored key, exactly as in the file
  std::string source_file;
  int64_t row_begin = 0;  // slice of the stored tensor along dim 0
  int64_t row_end = 0;
  std::vector<int64_t> shape;  // canonical shape
};

struct WeightPlan {
  std::vector<MappedTensor> tensors;  // every canonical tensor the model needs (when loadable)
  // The mapping applied, one line per stored key: "source -> canonical", splits with row
  // ranges, stripped wrapper prefixes and dropped keys with the rule that dropped them.
  std::vector<std::string> mapping;
  std::vector<std::string> problems;  // every problem; empty means loadable
  std::string stored_dtype;           // "float32" | "float16" | "bfloat16" | "mixed"
  int64_t parameter_count = 0;        // canonical parameters (tied embeddings counted once)
};

WeightPlan PlanWeights(const ModelConfig& config, const CheckpointListing& listing);

// Every canonical tensor `config` needs, with its shape (source_key = the canonical name):
// the plan of a checkpoint that would load, used to build random-weight models for benchmarks.
std::vector<MappedTensor> CanonicalTensors(const ModelConfig& config);

// Canonical tensor names the model reads, for one layer or the whole model.
std::string CanonicalLayerName(int32_t layer, const char* slot);  // ("3", "q.weight") -> "layers.3.q.weight"

}  // namespace glmserve
