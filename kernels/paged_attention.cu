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
__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One block per (sequence, query head). Scores for the whole context sit in shared memory:
// pass 1 computes q.k per position (a warp per position), pass 2 the softmax, pass 3 the
// weighted sum of V (a thread per head dim, positions in order).
template <typename T>
__global__ void PagedAttentionDecodeKernel(const T* __restrict__ q, const T* __restrict__ k_cache,
                                           const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                           const int32_t* __restrict__ context_lens, T* __restrict__ out,
                                           PagedAttentionShape s) {
  extern __shared__ float scores[];
  __shared__ float q_shared[256];
  __shared__ float reduce[kWarps];
  const int b = blockIdx.x, h = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kv_head = h / (s.num_heads / s.num_kv_heads);
  const int context = min(context_lens[b], s.max_context);
  const int32_t* table = block_tables + static_cast<int64_t>(b) * s.max_blocks_per_seq;
  const T* qh = q + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) q_shared[d] = ToFloat(qh[d]) * s.scale;
  __syncthreads();

  float local_max = -FLT_MAX;
  for (int p = warp; p < context; p += kWarps) {
    const int64_t slot = static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size;
    const T* k = k_cache + (slot * s.num_kv_heads + kv_head) * s.head_dim;
    float dot = 0.0f;
    for (int d = lane; d < s.head_dim; d += 32) dot += q_shared[d] * ToFloat(k[d]);
    dot = WarpSum(dot);
    if (lane == 0) scores[p] = dot;
    local_max = fmaxf(local_max, dot);
  }
  local_max = WarpMax(local_max);
  if (lane == 0) reduce[warp] = local_max;
  __syncthreads();
  float max_score = reduce[0];
  for (int w = 1; w < kWarps; ++w) max_score = fmaxf(max_score, reduce[w]);
  __syncthreads();

  float local_sum = 0.0f;
  for (int p = threadIdx.x; p < context; p += kThreads) {
    const float e = __expf(scores[p] - max_score);
    scores[p] = e;
    local_sum += e;
  }
  local_sum = WarpSum(local_sum);
  if (lane == 0) reduce[warp] = local_sum;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) total += reduce[w];
  const float inv_total = 1.0f / total;

  T* o = out + (static_cast<int64_t>(b) * s.num_heads + h) * s.head_dim;
  for (int d = threadIdx.x; d < s.head_dim; d += kThreads) {
    float acc = 0.0f;
    for (int p = 0; p < context; ++p) {
      const int64_t slot = static_cast<int64_t>(table[p / s.block_size]) * s.block_size + p % s.block_size;
      acc += scores[p] * ToFloat(v_cache[(slot * s.num_kv_heads + kv_head) * s.head_dim + d]);
    }
    Store(o + d, acc * inv_total);
  }
}

template <typename T>
bool Launch(const void* q, const void* k, const void* v, const int32_t* tables, const int32_t* lens, void* out,
            const PagedAttentionShape& s, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(s.max_context) * sizeof(float);
  // Raise the dynamic shared-memory cap once, to the most any launch may ask for, so that no
  // attribute call happens while a CUDA graph is being captured.
  static const bool configured =
      cudaFuncSetAttribute(PagedAttentionDecodeKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           PagedAttentionMaxContext() * static_cast<int>(sizeof(float))) == cudaSuccess;
  if (!configured && smem > 48 * 1024) return false;
  PagedAttentionDecodeKernel<T><<<dim3(s.batch, s.num_heads), kThreads, smem, stream>>>(
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
  static const int32_t max_context = [] {
    int device = 0, bytes = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
      return 0;
    }
    // Leave room for the static shared arrays.
    return (bytes - 4 * 1024) / static_cast<int>(sizeof(float));
  }();
  return max_context;
}

}  // namespace glmserve::kernels
