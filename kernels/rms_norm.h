// Fused residual-add + RMSNorm: residual += x; out = weight * residual / rms(residual).
// The CUDA kernel (sm_90a, fp32 accumulation) and its CPU reference share this contract.
#pragma once

#include <cstdint>

namespace glmserve::kernels {

// CPU reference. `residual` is updated in place; rows x hidden, row-major, fp32.
void FusedAddRmsNormReference(const float* x, float* residual, const float* weight, float* out, int64_t rows,
                              int64_t hidden, float eps);

// CUDA: same on device pointers; returns false when no CUDA device or the launch failed.
bool FusedAddRmsNormCuda(const float* x, float* residual, const float* weight, float* out, int64_t rows, int64_t hidden,
                         float eps, void* stream);

// CPU reference of the sandwich form: residual += RMSNorm(x) * x_weight; out = RMSNorm(residual) *
// weight (GLM-4-0414 / GLM-4.1V normalise each block's output before adding it). x_weight null:
// FusedAddRmsNormReference.
void FusedNormAddRmsNormReference(const float* x, const float* x_weight, float* residual, const float* weight,
                                  float* out, int64_t rows, int64_t hidden, float eps);

// Typed variant: element_type is static_cast<int>(ElementType) from paged_attention.h (0 fp32,
// 1 bf16, 2 fp16). `x` may be null (norm only). Rounding follows transformers' RMSNorm: residual rounded to the dtype,
// variance in fp32, normalised value rounded to the dtype, then multiplied by the weight and rounded again.
bool FusedAddRmsNormCudaTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows,
                              int64_t hidden, float eps, int element_type, void* stream);
// The typed sandwich form in one kernel: x is normalised (its own fp32 variance) and multiplied by
// x_weight, rounded to the dtype as transformers' RMSNorm output is, then added. x_weight may be
// null (FusedAddRmsNormCudaTyped); x must not be null when x_weight is not.
bool FusedNormAddRmsNormCudaTyped(const void* x, const void* x_weight, void* residual, const void* weight, void* out,
                                  int64_t rows, int64_t hidden, float eps, int element_type, void* stream);

// True when this build contains the CUDA kernels, a device is present, and the kernels have an
// image for its architecture (sm_90a).
bool CudaKernelsAvailable();

}  // namespace glmserve::kernels
