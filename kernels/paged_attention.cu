#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/paged_attention.h"

namespace glmserve::kernels {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void Store(__half* p, float v) { *p = __float2half(v); }

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One block per (sequence, query head); each warp walks every kWarps-th context position with an
// online softmax (running max, running sum, and the weighted V sum in registers: head_dim / 32
// values per lane), then the warps' partial results are merged. Shared memory does not grow
// with the context, so any context length runs at full occupancy.
template <typename T>
__global__ void PagedAttentionDecodeKernel(const T* __restrict__ q, const T* __restrict__ k_cache,
                                           const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                           const int32_t* __restrict__ context_lens, T* __restrict__ out,
                                           PagedAttentionShape s) {
  constexpr int kMaxPerLane = 8;  // head_dim <= 256
  __shared__ float q_shared[256];
  __shared__ float warp_max[kWarps], warp_sum[kWarps];
  __shared__ float warp_acc[kWarps][256];
  const int b = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = h / (s.num_heads / s.num_kv_heads);
  const int context = context_lens[b];
  const int per_lane = (s.head_dim + 31) / 32;
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;
  const T* qh = q + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) q_shared[d] = ToFloat(qh[d]) * s.scale;
  __syncthreads();

  float running_max = -FLT_MAX, running_sum = 0.0f;
  float acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) acc[i] = 0.0f;
  for (int p = warp; p < context; p += kWarps) {
    const int64_t slot = static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size;
    const int64_t base = (slot * s.num_kv_heads + kv_head) * s.head_dim;
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (i < per_lane && d < s.head_dim) dot += q_shared[d] * ToFloat(k_cache[base + d]);
    }
    dot = WarpSum(dot);
    const float new_max = fmaxf(running_max, dot);
    const float correction = __expf(running_max - new_max);
    const float weight = __expf(dot - new_max);
    running_sum = running_sum * correction + weight;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int d = lane + 32 * i;
      if (i < per_lane && d < s.head_dim) acc[i] = acc[i] * correction + weight * ToFloat(v_cache[base + d]);
    }
    running_max = new_max;
  }
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    if (i < per_lane && d < s.head_dim) warp_acc[warp][d] = acc[i];
  }
  __syncthreads();
  float max_score = -FLT_MAX;
  for (int w = 0; w < kWarps; ++w) max_score = fmaxf(max_score, warp_max[w]);
  float total = 0.0f;
  float scale_w[kWarps];
  for (int w = 0; w < kWarps; ++w) {
    scale_w[w] = warp_sum[w] > 0.0f ? __expf(warp_max[w] - max_score) : 0.0f;  // idle warps hold nothing
    total += warp_sum[w] * scale_w[w];
  }
  T* o = out + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) {
    float value = 0.0f;
    for (int w = 0; w < kWarps; ++w) value += warp_acc[w][d] * scale_w[w];
    Store(o + d, value / total);
  }
}

template <typename T>
bool Launch(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
            const PagedAttentionShape& s, cudaStream_t stream) {
  PagedAttentionDecodeKernel<T><<<dim3(s.batch, s.num_heads), kThreads, 0, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tables, lens, static_cast<T*>(out), s);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace

bool PagedAttentionDecodeCuda(const void* q, const void* k_cache, const void* v_cache, const int32_t* block_tables,
                              const int32_t* context_lens, void* out, const PagedAttentionShape& s, ElementType type,
                              void* stream) {
  if (s.batch <= 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 || s.num_heads % s.num_kv_heads != 0 ||
      s.head_dim <= 0 || s.head_dim > 256 || s.block_size <= 0 || s.max_context <= 0 ||
      s.max_context > PagedAttentionMaxContext()) {
    return false;
  }
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32: return Launch<float>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
    case ElementType::kBFloat16: return Launch<__nv_bfloat16>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
    case ElementType::kFloat16: return Launch<__half>(q, k_cache, v_cache, block_tables, context_lens, out, s, st);
  }
  return false;
}

int32_t PagedAttentionMaxContext() {
  // Shared memory no longer depends on the context: only int32 positions bound it.
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0 ? (1 << 30) : 0;
}

}  // namespace glmserve::kernels
