#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"
#include "kernels/rms_norm.h"
#include "kernels/rms_norm_row.cuh"

namespace glmserve::kernels {
namespace {

// One block per row; the residual stream is read once, updated, and reduced in fp32. With
// `x_weight` the delta is first normalised on its own (GLM-4-0414 / GLM-4.1V's post-attention and
// post-MLP norms), rounded as transformers rounds its RMSNorm output, then added.
template <typename T>
__global__ void FusedAddRmsNormTypedKernel(const T* __restrict__ x, const T* __restrict__ x_weight,
                                           T* __restrict__ residual, const T* __restrict__ weight, T* __restrict__ out,
                                           int64_t hidden, float eps) {
  AllowDependentsThenWait();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  T* res = residual + row * hidden;
  const T* delta = x != nullptr ? x + row * hidden : nullptr;
  float delta_inv_rms = 0.0f;
  if (x_weight != nullptr) {
    float local = 0.0f;
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
      const float d = ToFloat(delta[i]);
      local += d * d;
    }
    delta_inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
  }
  float local = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = ToFloat(res[i]);
    if (delta != nullptr) {
      float d = ToFloat(delta[i]);
      if (x_weight != nullptr) d = RoundTo<T>(ToFloat(x_weight[i]) * RoundTo<T>(d * delta_inv_rms));
      v = RoundTo<T>(v + d);
      res[i] = FromFloat<T>(v);
    }
    local += v * v;
  }
  const float inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float normed = RoundTo<T>(ToFloat(res[i]) * inv_rms);
    out[row * hidden + i] = FromFloat<T>(ToFloat(weight[i]) * normed);
  }
}

// Rows that fit in registers (the decode case): one block per row, each thread holds up to
// kNormRowMaxChunks 16-byte chunks of the row, so the residual is read once with wide loads, the
// update written once, and the normalisation reads nothing back from memory. Same rounding as
// above (AddRmsNormRow, shared with the GEMV that normalises its own input).
template <typename T>
__global__ void __launch_bounds__(kNormRowThreads)
    FusedAddRmsNormRowKernel(const T* __restrict__ x, const T* __restrict__ x_weight, T* __restrict__ residual,
                             const T* __restrict__ weight, T* __restrict__ out, int64_t hidden, float eps) {
  constexpr int E = Chunk16<T>::kElements;
  AllowDependentsThenWait();
  __shared__ float scratch[kNormRowThreads / 32];
  const int64_t row = blockIdx.x;
  uint4* res = reinterpret_cast<uint4*>(residual + row * hidden);
  AddRmsNormRow<T>(x != nullptr ? reinterpret_cast<const uint4*>(x + row * hidden) : nullptr,
                   reinterpret_cast<const uint4*>(x_weight), res, res, reinterpret_cast<const uint4*>(weight),
                   reinterpret_cast<uint4*>(out + row * hidden), static_cast<int>(hidden / E), hidden, eps, scratch);
}

template <typename T>
bool LaunchTyped(const void* x, const void* x_weight, void* residual, const void* weight, void* out, int64_t rows,
                 int64_t hidden, float eps, cudaStream_t stream) {
  constexpr int E = Chunk16<T>::kElements;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (hidden % E == 0 && hidden / E <= int64_t{kNormRowThreads} * kNormRowMaxChunks && aligned(residual) &&
      aligned(weight) && aligned(out) && (x == nullptr || aligned(x)) && (x_weight == nullptr || aligned(x_weight))) {
    return LaunchKernel(FusedAddRmsNormRowKernel<T>, dim3(static_cast<unsigned>(rows)), dim3(kNormRowThreads), 0,
                        stream, static_cast<const T*>(x), static_cast<const T*>(x_weight), static_cast<T*>(residual),
                        static_cast<const T*>(weight), static_cast<T*>(out), hidden, eps) == cudaSuccess;
  }
  return LaunchKernel(FusedAddRmsNormTypedKernel<T>, dim3(static_cast<unsigned>(rows)), dim3(256), 0, stream,
                      static_cast<const T*>(x), static_cast<const T*>(x_weight), static_cast<T*>(residual),
                      static_cast<const T*>(weight), static_cast<T*>(out), hidden, eps) == cudaSuccess;
}

}  // namespace

bool FusedNormAddRmsNormCudaTyped(const void* x, const void* x_weight, void* residual, const void* weight, void* out,
                                  int64_t rows, int64_t hidden, float eps, int element_type, void* stream) {
  if (rows <= 0) return true;
  if (x_weight != nullptr && x == nullptr) return false;
  auto st = static_cast<cudaStream_t>(stream);
  switch (element_type) {
    case 0:
      return LaunchTyped<float>(x, x_weight, residual, weight, out, rows, hidden, eps, st);
    case 1:
      return LaunchTyped<__nv_bfloat16>(x, x_weight, residual, weight, out, rows, hidden, eps, st);
    case 2:
      return LaunchTyped<__half>(x, x_weight, residual, weight, out, rows, hidden, eps, st);
  }
  return false;
}

bool FusedAddRmsNormCudaTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows,
                              int64_t hidden, float eps, int element_type, void* stream) {
  return FusedNormAddRmsNormCudaTyped(x, nullptr, residual, weight, out, rows, hidden, eps, element_type, stream);
}

bool FusedAddRmsNormCuda(const float* x, float* residual, const float* weight, float* out, int64_t rows, int64_t hidden,
                         float eps, void* stream) {
  return FusedAddRmsNormCudaTyped(x, residual, weight, out, rows, hidden, eps, 0, stream);
}

bool CudaKernelsAvailable() {
  // Asked on every attention launch (shape checks): answered once per process.
  static const bool available = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) return false;
    // The kernels are built for sm_90a only: on another architecture there is no image to load,
    // and the callers must keep to LibTorch's own ops rather than fail every launch.
    cudaFuncAttributes attributes;
    const bool loadable = cudaFuncGetAttributes(&attributes, FusedAddRmsNormTypedKernel<float>) == cudaSuccess;
    cudaGetLastError();  // a failed query must not linger as the next launch's error
    return loadable;
  }();
  return available;
}

}  // namespace glmserve::kernels
