// The model flags every runtime benchmark takes (--model, --device, --dtype and optionally
// --random-weights), registered once and turned into LoadOptions, plus the shared
// "parse, or print the problem and the usage" step.
#pragma once

#include <cstdio>
#include <string>

#include "runtime/model_runner.h"
#include "server/flags.h"

namespace glmserve::bench {

struct ModelFlags {
  std::string model;           // checkpoint directory (required)
  std::string device = "cpu";  // cpu or cuda[:N]
  std::string dtype;           // empty: float32 on CPU, bfloat16 on CUDA
  bool random_weights = false; // only registered where a benchmark supports it

  void Register(FlagParser& flags, bool with_random_weights = false) {
    flags.AddString("model", &model,
                    with_random_weights ? "checkpoint directory (or only config.json with --random-weights)"
                                        : "checkpoint directory");
    if (with_random_weights) flags.AddBool("random-weights", &random_weights, "random weights of the config");
    flags.AddString("device", &device, "cpu or cuda[:N]");
    flags.AddString("dtype", &dtype, "float32, bfloat16 or float16 (empty: per device)");
  }

  LoadOptions ToLoadOptions() const {
    LoadOptions load;
    load.device = device;
    load.dtype = dtype;
    load.random_weights = random_weights;
    return load;
  }
};

// False (after printing the error, if any, and the usage to stderr) on a bad flag, --help, or a
// missing --model; the caller then exits 2.
inline bool ParseBenchFlags(FlagParser& flags, const ModelFlags& model, int argc, char** argv) {
  const absl::Status parsed = flags.Parse(argc, argv);
  if (parsed.ok() && !flags.help_requested() && !model.model.empty()) return true;
  std::fprintf(stderr, "%s\n%s", parsed.ok() ? "" : std::string(parsed.message()).c_str(), flags.Usage().c_str());
  return false;
}

}  // namespace glmserve::bench
