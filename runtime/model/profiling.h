// Device-side profiling for benchmarks and diagnosis: records every CPU op and GPU kernel between
// Start and Stop with LibTorch's profiler (Kineto/CUPTI) and writes a Chrome trace
// (chrome://tracing, Perfetto). bench/summarize_trace.py sums kernel time per kernel name.
// No torch types here: callers outside runtime/ stay LibTorch-free.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace glmserve {

absl::Status StartDeviceProfile();
// Stops the profile started by StartDeviceProfile and writes the trace to `path`.
absl::Status StopDeviceProfile(const std::string& path);

}  // namespace glmserve
