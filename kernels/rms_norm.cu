#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/rms_norm.h"

namespace glmserve::kernels {
namespace {

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
    float v = ToFloat(res[i]);
    if (x != nullptr) {
      v = RoundTo<T>(v + ToFloat(x[row * hidden + i]));
      res[i] = FromFloat<T>(v);
    }
    local += v * v;
  }
  local = WarpSum(local);
  __shared__ float warp_sums[32];
  __shared__ float inv_rms;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = local;
  __syncthreads();
  if (warp == 0) {
    float total = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.0f;
    total = WarpSum(total);
    if (lane == 0) inv_rms = rsqrtf(total / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float normed = RoundTo<T>(ToFloat(res[i]) * inv_rms);
    out[row * hidden + i] = FromFloat<T>(ToFloat(weight[i]) * normed);
  }
}

// Rows that fit in registers (the decode case): one block per row, each thread holds up to
// kMaxChunks 16-byte chunks of the row, so the residual is read once with wide loads, the update
// written once, and the normalisation reads nothing back from memory. Same rounding as above.
constexpr int kRowThreads = 256;
constexpr int kMaxChunks = 4;

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    FusedAddRmsNormRowKernel(const T* __restrict__ x, T* __restrict__ residual, const T* __restrict__ weight,
                             T* __restrict__ out, int64_t hidden, float eps) {
  constexpr int E = Chunk16<T>::kElements;
  const int64_t row = blockIdx.x;
  const int chunks = static_cast<int>(hidden / E);
  uint4* res = reinterpret_cast<uint4*>(residual + row * hidden);
  const uint4* delta = x != nullptr ? reinterpret_cast<const uint4*>(x + row * hidden) : nullptr;
  float v[kMaxChunks][E];
  uint4 raw_res[kMaxChunks], raw_delta[kMaxChunks];
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {  // every load issued before any use
    const int chunk = threadIdx.x + c * kRowThreads;
    if (chunk < chunks) {
      raw_res[c] = res[chunk];
      if (delta != nullptr) raw_delta[c] = delta[chunk];
    }
  }
  float local = 0.0f;
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kRowThreads;
    if (chunk >= chunks) break;
    Chunk16<T>::ToFloats(raw_res[c], v[c]);
    if (delta != nullptr) {
      float d[E];
      Chunk16<T>::ToFloats(raw_delta[c], d);
#pragma unroll
      for (int i = 0; i < E; ++i) v[c][i] = RoundTo<T>(v[c][i] + d[i]);
      res[chunk] = Chunk16<T>::FromFloats(v[c]);
    }
#pragma unroll
    for (int i = 0; i < E; ++i) local += v[c][i] * v[c][i];
  }
  local = WarpSum(local);
  __shared__ float warp_sums[kRowThreads / 32];
  __shared__ float inv_rms;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = local;
  __syncthreads();
  if (warp == 0) {
    float total = lane < kRowThreads / 32 ? warp_sums[lane] : 0.0f;
    total = WarpSum(total);
    if (lane == 0) inv_rms = rsqrtf(total / static_cast<float>(hidden) + eps);
  }
  __syncthreads();
  const uint4* w = reinterpret_cast<const uint4*>(weight);
  uint4* o = reinterpret_cast<uint4*>(out + row * hidden);
#pragma unroll
  for (int c = 0; c < kMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kRowThreads;
    if (chunk >= chunks) break;
    float wf[E], result[E];
    Chunk16<T>::ToFloats(w[chunk], wf);
#pragma unroll
    for (int i = 0; i < E; ++i) result[i] = wf[i] * RoundTo<T>(v[c][i] * inv_rms);
    o[chunk] = Chunk16<T>::FromFloats(result);
  }
}

template <typename T>
bool LaunchTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows, int64_t hidden, float eps,
                 cudaStream_t stream) {
  constexpr int E = Chunk16<T>::kElements;
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (hidden % E == 0 && hidden / E <= int64_t{kRowThreads} * kMaxChunks && aligned(residual) && aligned(weight) &&
      aligned(out) && (x == nullptr || aligned(x))) {
    FusedAddRmsNormRowKernel<T><<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(residual), static_cast<const T*>(weight), static_cast<T*>(out),
        hidden, eps);
    return cudaGetLastError() == cudaSuccess;
  }
  FusedAddRmsNormTypedKernel<T><<<static_cast<unsigned>(rows), 256, 0, stream>>>(
      static_cast<const T*>(x), static_cast<T*>(residual), static_cast<const T*>(weight), static_cast<T*>(out), hidden,
      eps);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

bool FusedAddRmsNormCudaTyped(const void* x, void* residual, const void* weight, void* out, int64_t rows,
                              int64_t hidden, float eps, int element_type, void* stream) {
  if (rows <= 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  switch (element_type) {
    case 0:
      return LaunchTyped<float>(x, residual, weight, out, rows, hidden, eps, st);
    case 1:
      return LaunchTyped<__nv_bfloat16>(x, residual, weight, out, rows, hidden, eps, st);
    case 2:
      return LaunchTyped<__half>(x, residual, weight, out, rows, hidden, eps, st);
  }
  return false;
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
