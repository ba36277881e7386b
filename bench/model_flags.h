// The model flags every runtime benchmark takes (--model, --device, --dtype and optionally
// --random-weights), registered once and turned into LoadOptions, plus the benchmarks' shared
// "parse, or print the problem and the usage" step and integer-list flag values.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

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

// False (after printing the error, if any, and the usage to stderr) on a bad flag, --help, or
// (with `model`) a missing --model; the caller then exits 2.
inline bool ParseBenchFlags(FlagParser& flags, const ModelFlags* model, int argc, char** argv) {
  const absl::Status parsed = flags.Parse(argc, argv);
  if (parsed.ok() && !flags.help_requested() && (model == nullptr || !model->model.empty())) return true;
  std::fprintf(stderr, "%s\n%s", parsed.ok() ? "" : std::string(parsed.message()).c_str(), flags.Usage().c_str());
  return false;
}
inline bool ParseBenchFlags(FlagParser& flags, const ModelFlags& model, int argc, char** argv) {
  return ParseBenchFlags(flags, &model, argc, argv);
}

// The comma-separated integers of flag --`name`, each in [min, max]; false after printing which
// piece is not.
inline bool ParseIntList(const std::string& name, const std::string& text, int32_t min, int32_t max,
                         std::vector<int32_t>* values) {
  values->clear();
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(piece, &value) || value < min || value > max) {
      std::fprintf(stderr, "--%s: '%s' is not an integer in [%d, %d]\n", name.c_str(), std::string(piece).c_str(),
                   min, max);
      return false;
    }
    values->push_back(value);
  }
  return true;
}

}  // namespace glmserve::bench
