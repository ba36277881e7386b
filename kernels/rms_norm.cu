#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/rms_norm.h"

namespace glmserve::kernels {
namespace {

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float Load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float Round(float v, const float*) { return v; }
__device__ __forceinline__ float Round(float v, const __nv_bfloat16*) { return __bfloat162float(__float2bfloat16(v)); }
__device__ __forceinline__ float Round(float v, const __half*) { return __half2float(__float2half(v)); }
__device__ __forceinline__ void StoreTo(float* p, float v) { *p = v; }
__device__ __forceinline__ void StoreTo(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void StoreTo(__half* p, float v) { *p = __float2half(v); }

// One block per row; the residual stream is read once, updated, and reduced in fp32 (warp
// shuffles, then across warps through shared memory).
template <typename T>
__global__ void FusedAddRmsNormTypedKernel(const T* __restrict__ x, T* __restrict__ residual,
                                           const T* __restrict__ weight, T* __restrict__ out, int64_t hidden,
                                           float eps) {
  const int64_t row = blockIdx.x;
  T* res = residual + row * hidden;
  float local = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = Load(res + i);
    if (x != nullptr) {
      v = Round(v + Load(x + row * hidden + i), res);
      StoreTo(res + i, v);
    }
    local += v * v;
  }
  for (int offset = 16; offset > 0; offset >>= 1) local += __shfl_xor_sync(0xffffffffu, local, offset);
  __shared__ float warp_sums[32];
  __shared__ float inv_rms;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = local;
  __syncthreads();
  if (warp == 0) {
    float total = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) inv_rms = rsqrtf(total / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float normed = Round(Load(res + i) * inv_rms, res);
    StoreTo(out + row * hidden + i, Load(weight + i) * normed);
  }
}

template <typename T>
bool LaunchTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows, int64_t hidden, float eps,
                 cudaStream_t stream) {
  FusedAddRmsNormTypedKernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(residual), static_cast<const T*>(weight), static_cast<T*>(out),
      hidden, eps);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

bool FusedAddRmsNormCudaTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows,
                              int64_t hidden, float eps, int element_type, void* stream) {
  if (rows <= 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  switch (element_type) {
    case 0: return LaunchTyped<float>(x, residual, weight, out, rows, hidden, eps, st);
    case 1: return LaunchTyped<__nv_bfloat16>(x, residual, weight, out, rows, hidden, eps, st);
    case 2: return LaunchTyped<__half>(x, residual, weight, out, rows, hidden, eps, st);
  }
  return false;
}

bool FusedAddRmsNormCuda(const float* x, float* residual, const float* weight, float* out, int64_t rows,
                         int64_t hidden, float eps, void* stream) {
  return FusedAddRmsNormCudaTyped(x, residual, weight, out, rows, hidden, eps, 0, stream);
}

bool CudaKernelsAvailable() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace glmserve::kernels
