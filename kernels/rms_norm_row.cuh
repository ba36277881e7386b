// The add+RMSNorm of one row held in registers by one block of kNormRowThreads threads: the
// fused norm kernel's decode case (rms_norm.cu) and the GEMV that normalises its own input row
// (decode_ops.cu) share it, so both round and sum in the same order and give the same bits.
// Included by the .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/device_math.cuh"

namespace glmserve::kernels {

constexpr int kNormRowThreads = 256;
constexpr int kNormRowMaxChunks = 4;  // 16-byte chunks a thread: rows up to 8,192 bf16 elements

// Sum of `local` over the block (every thread gets it). `scratch` holds a float per warp; the
// trailing barrier lets a second call reuse it.
__device__ __forceinline__ float BlockSum(float local, float* scratch) {
  local = WarpSum(local);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = (blockDim.x + 31) / 32;
  if (lane == 0) scratch[warp] = local;
  __syncthreads();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = WarpSum(total);
  __syncthreads();
  return total;
}

// One row of `chunks` 16-byte chunks: v = residual + delta (delta first normalised and scaled by
// delta_weight where that is given: GLM-4-0414's sandwich norms), each rounded to T; v goes to
// residual_out where that is given (and delta is), RMSNorm(v) * weight to out. Pointers may be
// global or shared; every thread of the block must call it. scratch: kNormRowThreads / 32 floats.
template <typename T>
__device__ __forceinline__ void AddRmsNormRow(const uint4* delta, const uint4* delta_weight, const uint4* residual,
                                              uint4* residual_out, const uint4* weight, uint4* out, int chunks,
                                              int64_t hidden, float eps, float* scratch) {
  constexpr int E = Chunk16<T>::kElements;
  float v[kNormRowMaxChunks][E];
  uint4 raw_res[kNormRowMaxChunks], raw_delta[kNormRowMaxChunks];
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {  // every load issued before any use
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk < chunks) {
      raw_res[c] = residual[chunk];
      if (delta != nullptr) raw_delta[c] = delta[chunk];
    }
  }
  float delta_inv_rms = 0.0f;
  if (delta_weight != nullptr) {
    float local = 0.0f;
#pragma unroll
    for (int c = 0; c < kNormRowMaxChunks; ++c) {
      const int chunk = threadIdx.x + c * kNormRowThreads;
      if (chunk >= chunks) break;
      float d[E];
      Chunk16<T>::ToFloats(raw_delta[c], d);
#pragma unroll
      for (int i = 0; i < E; ++i) local = __fmaf_rn(d[i], d[i], local);
    }
    delta_inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
  }
  float local = 0.0f;
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    Chunk16<T>::ToFloats(raw_res[c], v[c]);
    if (delta != nullptr) {
      float d[E];
      Chunk16<T>::ToFloats(raw_delta[c], d);
      if (delta_weight != nullptr) {
        float wf[E];
        Chunk16<T>::ToFloats(delta_weight[chunk], wf);
#pragma unroll
        for (int i = 0; i < E; ++i) d[i] = RoundTo<T>(wf[i] * RoundTo<T>(d[i] * delta_inv_rms));
      }
#pragma unroll
      for (int i = 0; i < E; ++i) v[c][i] = RoundTo<T>(v[c][i] + d[i]);
      if (residual_out != nullptr) residual_out[chunk] = Chunk16<T>::FromFloats(v[c]);
    }
#pragma unroll
    for (int i = 0; i < E; ++i) local = __fmaf_rn(v[c][i], v[c][i], local);
  }
  const float inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    float wf[E], result[E];
    Chunk16<T>::ToFloats(weight[chunk], wf);
#pragma unroll
    for (int i = 0; i < E; ++i) result[i] = wf[i] * RoundTo<T>(v[c][i] * inv_rms);
    out[chunk] = Chunk16<T>::FromFloats(result);
  }
}

// The same row, the same bits, with few registers (for a kernel that keeps its own loads in
// flight in registers meanwhile: the GEMV that normalises its input row): the row passes through
// `row` (kNormRowThreads * kNormRowMaxChunks chunks of shared memory at most) instead of being
// held, v stored there rounded as it is anyway, then overwritten by RMSNorm(v) * weight. Each
// thread rereads only the chunks it wrote.
template <typename T>
__device__ __forceinline__ void AddRmsNormRowThroughShared(const uint4* delta, const uint4* delta_weight,
                                                           const uint4* residual, uint4* residual_out,
                                                           const uint4* weight, uint4* row, int chunks, int64_t hidden,
                                                           float eps, float* scratch) {
  constexpr int E = Chunk16<T>::kElements;
  float delta_inv_rms = 0.0f;
  if (delta_weight != nullptr) {
    float local = 0.0f;
#pragma unroll
    for (int c = 0; c < kNormRowMaxChunks; ++c) {
      const int chunk = threadIdx.x + c * kNormRowThreads;
      if (chunk >= chunks) break;
      float d[E];
      Chunk16<T>::ToFloats(delta[chunk], d);
#pragma unroll
      for (int i = 0; i < E; ++i) local = __fmaf_rn(d[i], d[i], local);
    }
    delta_inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
  }
  float local = 0.0f;
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    float v[E];
    Chunk16<T>::ToFloats(residual[chunk], v);
    if (delta != nullptr) {
      float d[E];
      Chunk16<T>::ToFloats(delta[chunk], d);
      if (delta_weight != nullptr) {
        float wf[E];
        Chunk16<T>::ToFloats(delta_weight[chunk], wf);
#pragma unroll
        for (int i = 0; i < E; ++i) d[i] = RoundTo<T>(wf[i] * RoundTo<T>(d[i] * delta_inv_rms));
      }
#pragma unroll
      for (int i = 0; i < E; ++i) v[i] = RoundTo<T>(v[i] + d[i]);
      if (residual_out != nullptr) residual_out[chunk] = Chunk16<T>::FromFloats(v);
    }
    row[chunk] = Chunk16<T>::FromFloats(v);
#pragma unroll
    for (int i = 0; i < E; ++i) local = __fmaf_rn(v[i], v[i], local);
  }
  const float inv_rms = rsqrtf(BlockSum(local, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    float v[E], wf[E], result[E];
    Chunk16<T>::ToFloats(row[chunk], v);
    Chunk16<T>::ToFloats(weight[chunk], wf);
#pragma unroll
    for (int i = 0; i < E; ++i) result[i] = wf[i] * RoundTo<T>(v[i] * inv_rms);
    row[chunk] = Chunk16<T>::FromFloats(result);
  }
}

}  // namespace glmserve::kernels
