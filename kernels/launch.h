// Programmatic dependent launch (Hopper): a kernel launched with it may start while the kernel
// before it in the stream is still running; it waits for that kernel's end (and its writes)
// inside, at griddepcontrol.wait, and may read before that only what no kernel of the step
// writes (weights). A decode step at batch 1 is ~380 short kernels whose launch gaps and ramp-up
// would otherwise leave HBM idle between them; with it each GEMV starts streaming its weights
// while the kernels before it finish. Captured CUDA graphs keep it (programmatic edges).
// On by default; the runtime turns it off for A/B measurements (GLMSERVE_CUDA_DISABLE=pdl).
#pragma once

#include <atomic>

namespace glmserve::kernels {

inline std::atomic<bool>& DependentLaunchFlag() {
  static std::atomic<bool> enabled{true};
  return enabled;
}
// Affects launches made after the call (and graphs captured after it).
inline void SetDependentLaunch(bool enabled) { DependentLaunchFlag().store(enabled, std::memory_order_relaxed); }
inline bool DependentLaunchEnabled() { return DependentLaunchFlag().load(std::memory_order_relaxed); }

}  // namespace glmserve::kernels
