#include "runtime/model/profiling.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <exception>
#include <set>

#include "absl/strings/str_cat.h"

namespace glmserve {
namespace {

namespace profiler = torch::autograd::profiler;
using torch::profiler::impl::ActivityType;

std::set<ActivityType> Activities() {
  std::set<ActivityType> activities = {ActivityType::CPU};
#ifdef GLMSERVE_TORCH_CUDA
  activities.insert(ActivityType::CUDA);
#endif
  return activities;
}

}  // namespace

absl::Status StartDeviceProfile() {
  try {
    const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
    profiler::prepareProfiler(config, Activities());
    profiler::enableProfiler(config, Activities());
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("starting the profiler: ", e.what()));
  }
}

absl::Status StopDeviceProfile(const std::string& path) {
  try {
    std::unique_ptr<profiler::ProfilerResult> result = profiler::disableProfiler();
    if (result == nullptr) return absl::FailedPreconditionError("stopping the profiler: it was not running");
    result->save(path);
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("writing the profile to '", path, "': ", e.what()));
  }
}

}  // namespace glmserve
