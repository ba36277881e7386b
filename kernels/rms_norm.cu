#include <cuda_runtime.h>

#include "kernels/rms_norm.h"

namespace glmserve::kernels {
namespace {

// One block per row; the residual stream is read once, updated, and reduced in fp32.
__global__ void FusedAddRmsNormKernel(const float* __restrict__ x, float* __restrict__ residual,
                                      const float* __restrict__ weight, float* __restrict__ out,
                                      int64_t hidden, float eps) {
  const int64_t row = blockIdx.x;
  float* res = residual + row * hidden;
  const float* in = x + row * hidden;
  float local = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float v = res[i] + in[i];
    res[i] = v;
    local += v * v;
  }
  // Warp reduction, then across warps through shared memory.
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
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[row * hidden + i] = weight[i] * (res[i] * inv_rms);
}

}  // namespace

bool FusedAddRmsNormCuda(const float* x, float* residual, const float* weight, float* out, int64_t rows,
                         int64_t hidden, float eps, void* stream) {
  if (rows <= 0) return true;
  FusedAddRmsNormKernel<<<static_cast<unsigned>(rows), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      x, residual, weight, out, hidden, eps);
  return cudaGetLastError() == cudaSuccess;
}

bool CudaKernelsAvailable() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace glmserve::kernels
