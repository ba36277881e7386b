// Both sides of programmatic dependent launch (kernels/launch.h says why). Every kernel launched
// through LaunchKernel calls WaitForPrerequisiteGrid before it reads anything an earlier kernel
// writes and before it writes anything at all. Included by the .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "kernels/launch.h"

namespace glmserve::kernels {

// Returns once the grid this one was launched after has ended and its writes are visible (at
// once where there is none, or the launch did not allow an early start).
__device__ __forceinline__ void WaitForPrerequisiteGrid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel in the stream start once every block of this grid has called this or
// ended; that kernel still waits for this grid's end before it reads its results.
__device__ __forceinline__ void AllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// The prologue of a short kernel with nothing to do before its inputs are ready: the next kernel
// may start at once (a GEMV after it starts streaming its weights), then this one waits.
__device__ __forceinline__ void AllowDependentsThenWait() {
  AllowDependentLaunch();
  WaitForPrerequisiteGrid();
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to start early where dependent launch
// is on. Returns the launch's error (cudaSuccess when queued) and, like cudaGetLastError after a
// <<<>>> launch, leaves none behind.
template <typename... Params, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                         Args&&... args) {
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = DependentLaunchEnabled() ? 1 : 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attribute;
  config.numAttrs = 1;
  const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();
  return launched != cudaSuccess ? launched : last;
}

}  // namespace glmserve::kernels
