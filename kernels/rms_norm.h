// Fused residual-add + RMSNorm: residual += x; out = weight * residual / rms(residual).
// The CUDA kernel (sm_90, fp32 accumulation) and its CPU reference share this contract.
#pragma once

#include <cstdint>

namespace glmserve::kernels {

// CPU reference. `residual` is updated in place; rows x hidden, row-major, fp32.
void FusedAddRmsNormReference(const float* x, float* residual, const float* weight, float* out,
                              int64_t rows, int64_t hidden, float eps);

// CUDA: same on device pointers; returns false when no CUDA device or the launch failed.
bool FusedAddRmsNormCuda(const float* x, float* residual, const float* weight, float* out,
                         int64_t rows, int64_t hidden, float eps, void* stream);

// True when this build contains the CUDA kernels and a device is present.
bool CudaKernelsAvailable();

}  // namespace glmserve::kernels
