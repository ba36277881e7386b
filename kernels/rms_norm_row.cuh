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

// Holds the threads that sum a row together: the whole block (kBarrier 0), or the first
// kNormRowThreads threads on named barrier kBarrier (a block whose other warps do other work).
template <int kBarrier>
__device__ __forceinline__ void RowThreadsSync() {
  if constexpr (kBarrier == 0) {
    __syncthreads();
  } else {
    asm volatile("bar.sync %0, %1;\n" ::"n"(kBarrier), "n"(kNormRowThreads) : "memory");
  }
}

// Sum of `local` over the block, or over the first kNormRowThreads threads with kBarrier (every
// one of them gets it). `scratch` holds a float per warp; the trailing barrier lets a second call
// reuse it.
template <int kBarrier = 0>
__device__ __forceinline__ float BlockSum(float local, float* scratch) {
  local = WarpSum(local);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = kBarrier == 0 ? (blockDim.x + 31) / 32 : kNormRowThreads / 32;
  if (lane == 0) scratch[warp] = local;
  RowThreadsSync<kBarrier>();
  float total = lane < warps ? scratch[lane] : 0.0f;
  total = WarpSum(total);
  RowThreadsSync<kBarrier>();
  return total;
}

// The per-chunk steps both forms below share, so they round and sum alike. Sum of squares of one
// chunk into local, in element order:
template <typename T>
__device__ __forceinline__ void AddSquares(const uint4& raw, float& local) {
  constexpr int E = Chunk16<T>::kElements;
  float x[E];
  Chunk16<T>::ToFloats(raw, x);
#pragma unroll
  for (int i = 0; i < E; ++i) local = __fmaf_rn(x[i], x[i], local);
}

// v = residual + delta of one chunk, each element rounded to T; the delta first normalised and
// scaled by its weight chunk where that is given (sandwich norms). v's squares go into local.
template <typename T>
__device__ __forceinline__ uint4 AddDelta(const uint4& raw_residual, const uint4* raw_delta,
                                          const uint4* delta_weight_chunk, float delta_inv_rms, float& local) {
  constexpr int E = Chunk16<T>::kElements;
  float v[E];
  Chunk16<T>::ToFloats(raw_residual, v);
  if (raw_delta != nullptr) {
    float d[E];
    Chunk16<T>::ToFloats(*raw_delta, d);
    if (delta_weight_chunk != nullptr) {
      float wf[E];
      Chunk16<T>::ToFloats(*delta_weight_chunk, wf);
#pragma unroll
      for (int i = 0; i < E; ++i) d[i] = RoundTo<T>(wf[i] * RoundTo<T>(d[i] * delta_inv_rms));
    }
#pragma unroll
    for (int i = 0; i < E; ++i) v[i] = RoundTo<T>(v[i] + d[i]);
  }
#pragma unroll
  for (int i = 0; i < E; ++i) local = __fmaf_rn(v[i], v[i], local);
  return Chunk16<T>::FromFloats(v);  // exact: every element is a T already
}

// RMSNorm(v) * weight of one chunk.
template <typename T>
__device__ __forceinline__ uint4 NormChunk(const uint4& raw_v, const uint4& raw_weight, float inv_rms) {
  constexpr int E = Chunk16<T>::kElements;
  float v[E], wf[E], result[E];
  Chunk16<T>::ToFloats(raw_v, v);
  Chunk16<T>::ToFloats(raw_weight, wf);
#pragma unroll
  for (int i = 0; i < E; ++i) result[i] = wf[i] * RoundTo<T>(v[i] * inv_rms);
  return Chunk16<T>::FromFloats(result);
}

// One row of `chunks` 16-byte chunks: v = residual + delta (delta first normalised and scaled by
// delta_weight where that is given: GLM-4-0414's sandwich norms), each rounded to T; v goes to
// residual_out where that is given (and delta is), RMSNorm(v) * weight to out. Pointers may be
// global or shared; every thread of the block must call it. scratch: kNormRowThreads / 32 floats.
// kHeld: the row is held in registers (every load issued before any use, nothing read back: the
// norm kernel). Otherwise it passes through `out`, v first, then the result over it, each thread
// rereading only the chunks it wrote: few registers, for a kernel that keeps its own loads in
// flight meanwhile (the GEMV that normalises its input row into shared memory). Same bits.
// kBarrier: as BlockSum's (only the first kNormRowThreads threads call it).
template <typename T, bool kHeld = true, int kBarrier = 0>
__device__ __forceinline__ void AddRmsNormRow(const uint4* delta, const uint4* delta_weight, const uint4* residual,
                                              uint4* residual_out, const uint4* weight, uint4* out, int chunks,
                                              int64_t hidden, float eps, float* scratch) {
  uint4 held[kNormRowMaxChunks], held_delta[kNormRowMaxChunks];
  if constexpr (kHeld) {
#pragma unroll
    for (int c = 0; c < kNormRowMaxChunks; ++c) {
      const int chunk = threadIdx.x + c * kNormRowThreads;
      if (chunk < chunks) {
        held[c] = residual[chunk];
        if (delta != nullptr) held_delta[c] = delta[chunk];
      }
    }
  }
  // Chunk c of this thread (the row's chunk `chunk`) of the delta, and of v or the residual.
  auto delta_chunk = [&](int c, int chunk) -> uint4 {
    if constexpr (kHeld) {
      return held_delta[c];
    } else {
      return delta[chunk];
    }
  };
  auto row_chunk = [&](int c, int chunk, const uint4* source) -> uint4 {
    if constexpr (kHeld) {
      return held[c];
    } else {
      return source[chunk];
    }
  };
  float delta_inv_rms = 0.0f;
  if (delta_weight != nullptr) {
    float local = 0.0f;
#pragma unroll
    for (int c = 0; c < kNormRowMaxChunks; ++c) {
      const int chunk = threadIdx.x + c * kNormRowThreads;
      if (chunk >= chunks) break;
      AddSquares<T>(delta_chunk(c, chunk), local);
    }
    delta_inv_rms = rsqrtf(BlockSum<kBarrier>(local, scratch) / static_cast<float>(hidden) + eps);
  }
  float local = 0.0f;
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    const uint4 raw_delta = delta != nullptr ? delta_chunk(c, chunk) : uint4{};
    const uint4 v = AddDelta<T>(row_chunk(c, chunk, residual), delta != nullptr ? &raw_delta : nullptr,
                                delta_weight != nullptr ? &delta_weight[chunk] : nullptr, delta_inv_rms, local);
    if (delta != nullptr && residual_out != nullptr) residual_out[chunk] = v;
    if constexpr (kHeld) {
      held[c] = v;
    } else {
      out[chunk] = v;
    }
  }
  const float inv_rms = rsqrtf(BlockSum<kBarrier>(local, scratch) / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int c = 0; c < kNormRowMaxChunks; ++c) {
    const int chunk = threadIdx.x + c * kNormRowThreads;
    if (chunk >= chunks) break;
    out[chunk] = NormChunk<T>(row_chunk(c, chunk, out), weight[chunk], inv_rms);
  }
}

}  // namespace glmserve::kernels
