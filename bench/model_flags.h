// The model flags every runtime benchmark takes (--model, --device, --dtype and optionally
// --random-weights), registered once and turned into LoadOptions.
#pragma once

#include <string>

#include "flags/flags.h"
#include "runtime/model_runner.h"

namespace glmserve::bench {

struct ModelFlags {
  std::string model;                         // checkpoint directory (required)
  flags::Device device;                      // cpu unless --device says otherwise
  flags::Dtype dtype = flags::Dtype::kAuto;  // float32 on CPU, bfloat16 on CUDA
  bool random_weights = false;               // only registered where a benchmark supports it

  void Register(flags::FlagSet& set, bool with_random_weights = false) {
    set.Path("model", &model,
             with_random_weights ? "checkpoint directory (or only config.json with --random-weights)"
                                 : "checkpoint directory")
        .ValueName("DIR");
    if (with_random_weights) set.Switch("random-weights", &random_weights, "random weights of the config");
    set.DeviceFlag("device", &device, "where the model runs");
    set.DtypeFlag("dtype", &dtype, "compute dtype");
  }

  LoadOptions ToLoadOptions() const {
    LoadOptions load;
    load.device = device.ToString();
    load.dtype = flags::DtypeName(dtype);
    load.random_weights = random_weights;
    return load;
  }
};

// FlagSet::ParseCommandLine, plus a missing --model (when `model` is given) as a usage error.
inline std::optional<int> ParseBenchFlags(flags::FlagSet& set, const ModelFlags* model, int argc, char** argv) {
  if (std::optional<int> exit_code = set.ParseCommandLine(argc, argv)) return exit_code;
  if (model != nullptr && model->model.empty()) return set.UsageError("--model: required");
  return std::nullopt;
}
inline std::optional<int> ParseBenchFlags(flags::FlagSet& set, const ModelFlags& model, int argc, char** argv) {
  return ParseBenchFlags(set, &model, argc, argv);
}

}  // namespace glmserve::bench
