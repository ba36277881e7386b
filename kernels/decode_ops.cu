#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"

namespace glmserve::kernels {
namespace {

// ---- Rotary + KV write: one block per token ----
// Each thread loads all its pairs before computing any (a loop that loads, computes and stores
// one pair at a time waits for one global load per pair: most of a small kernel's time).
constexpr int kRotaryThreads = 256;
constexpr int kRotaryUnroll = 4;

template <typename T>
__global__ void __launch_bounds__(kRotaryThreads)
RotaryKvWriteKernel(T* __restrict__ qkv, const int64_t* __restrict__ positions, const float* __restrict__ inv_freq,
                    const int64_t* __restrict__ slots, T* __restrict__ k_cache, T* __restrict__ v_cache,
                    RotaryKvShape s) {
  const int t = blockIdx.x;
  T* row = qkv + t * s.qkv_row_stride;
  const int half = s.rotary_dim / 2;
  const int pairs = (s.num_heads + s.num_kv_heads) * half;
  const float position = static_cast<float>(positions[t]);
  for (int first = threadIdx.x; first < pairs; first += kRotaryThreads * kRotaryUnroll) {
    float even[kRotaryUnroll], odd[kRotaryUnroll], freq[kRotaryUnroll];
#pragma unroll
    for (int u = 0; u < kRotaryUnroll; ++u) {
      const int i = first + u * kRotaryThreads;
      if (i < pairs) {
        const int head = i / half, j = i - head * half;
        const T* pair = row + static_cast<int64_t>(head) * s.head_dim + 2 * j;
        even[u] = ToFloat(pair[0]);
        odd[u] = ToFloat(pair[1]);
        freq[u] = inv_freq[j];
      }
    }
#pragma unroll
    for (int u = 0; u < kRotaryUnroll; ++u) {
      const int i = first + u * kRotaryThreads;
      if (i < pairs) {
        const int head = i / half, j = i - head * half;
        // __f*_rn: no fused multiply-add, so fp32 rounds exactly as the separate ATen ops do.
        const float angle = __fmul_rn(position, freq[u]);
        const float c = RoundTo<T>(cosf(angle)), sn = RoundTo<T>(sinf(angle));
        T* pair = row + static_cast<int64_t>(head) * s.head_dim + 2 * j;
        pair[0] = FromFloat<T>(__fsub_rn(RoundTo<T>(__fmul_rn(even[u], c)), RoundTo<T>(__fmul_rn(odd[u], sn))));
        pair[1] = FromFloat<T>(__fadd_rn(RoundTo<T>(__fmul_rn(odd[u], c)), RoundTo<T>(__fmul_rn(even[u], sn))));
      }
    }
  }
  __syncthreads();  // k rotated above is copied below
  const int64_t q_size = static_cast<int64_t>(s.num_heads) * s.head_dim;
  const int64_t kv_size = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
  const int64_t slot = slots[t];
  for (int64_t first = threadIdx.x; first < kv_size; first += kRotaryThreads * kRotaryUnroll) {
    T k[kRotaryUnroll], v[kRotaryUnroll];
#pragma unroll
    for (int u = 0; u < kRotaryUnroll; ++u) {
      const int64_t i = first + u * kRotaryThreads;
      if (i < kv_size) {
        k[u] = row[q_size + i];
        v[u] = row[q_size + kv_size + i];
      }
    }
#pragma unroll
    for (int u = 0; u < kRotaryUnroll; ++u) {
      const int64_t i = first + u * kRotaryThreads;
      if (i < kv_size) {
        k_cache[slot * kv_size + i] = k[u];
        v_cache[slot * kv_size + i] = v[u];
      }
    }
  }
}

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i - r * width;
    const float gate = ToFloat(gate_up[r * 2 * width + c]);
    const float up = ToFloat(gate_up[r * 2 * width + width + c]);
    const float silu = RoundTo<T>(__fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate))));
    out[i] = FromFloat<T>(__fmul_rn(up, silu));
  }
}

// ---- GEMV: each warp owns R output rows and streams their weights once with 16-byte loads ----
constexpr int kGemvWarps = 8;

// M input rows, R weight rows per warp, U 16-byte loads per lane and row in flight.
template <typename T, int M, int R, int U>
__global__ void __launch_bounds__(kGemvWarps * 32)
GemvKernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
           int64_t n, int64_t k) {
  constexpr int E = 16 / sizeof(T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * R;
  if (row0 >= n) return;
  const int64_t chunks = k / E;
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * U) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        // Weights are read once per step: stream them past L1 so x stays cached.
        wv[u][r] = c < chunks && row0 + r < n ? __ldcs(w4 + (row0 + r) * chunks + c) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + 32 * u;
      if (c >= chunks) break;
      float wf[R][E];
#pragma unroll
      for (int r = 0; r < R; ++r) Chunk16<T>::ToFloats(wv[u][r], wf[r]);
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[E];
        Chunk16<T>::ToFloats(__ldg(x4 + m * chunks + c), xf);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[m][r] = fmaf(xf[e], wf[r][e], acc[m][r]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float total = WarpSum(acc[m][r]);
      if (lane == 0 && row0 + r < n) {
        y[m * n + row0 + r] = FromFloat<T>(bias != nullptr ? total + ToFloat(bias[row0 + r]) : total);
      }
    }
  }
}

template <typename T, int M, int R, int U>
bool LaunchGemv(const void* x, const void* w, const void* bias, void* y, int64_t n, int64_t k, cudaStream_t stream) {
  const int64_t rows_per_block = int64_t{kGemvWarps} * R;
  const int64_t blocks = (n + rows_per_block - 1) / rows_per_block;
  GemvKernel<T, M, R, U><<<static_cast<unsigned>(blocks), kGemvWarps * 32, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(bias), static_cast<T*>(y), n, k);
  return cudaGetLastError() == cudaSuccess;
}

template <typename T>
bool GemvTyped(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
               cudaStream_t st) {
  // Few rows: one weight row per warp and deep unrolling keep enough loads in flight; more rows
  // share each loaded weight chunk across R weight rows so x is re-read less.
  switch (rows) {
    case 1: return LaunchGemv<T, 1, 1, 8>(x, w, bias, y, n, k, st);
    case 2: return LaunchGemv<T, 2, 2, 4>(x, w, bias, y, n, k, st);
    case 3: return LaunchGemv<T, 3, 2, 4>(x, w, bias, y, n, k, st);
    case 4: return LaunchGemv<T, 4, 2, 4>(x, w, bias, y, n, k, st);
    case 5: return LaunchGemv<T, 5, 4, 2>(x, w, bias, y, n, k, st);
    case 6: return LaunchGemv<T, 6, 4, 2>(x, w, bias, y, n, k, st);
    case 7: return LaunchGemv<T, 7, 4, 2>(x, w, bias, y, n, k, st);
    case 8: return LaunchGemv<T, 8, 4, 2>(x, w, bias, y, n, k, st);
  }
  return false;
}

int ElementBytes(ElementType type) { return type == ElementType::kFloat32 ? 4 : 2; }

}  // namespace

bool RotaryKvWriteCuda(void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots,
                       void* k_cache, void* v_cache, const RotaryKvShape& s, ElementType type, void* stream) {
  if (s.tokens < 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0 || s.rotary_dim < 0 ||
      s.rotary_dim % 2 != 0 || s.rotary_dim > s.head_dim ||
      s.qkv_row_stride < int64_t{s.num_heads + 2 * s.num_kv_heads} * s.head_dim) {
    return false;
  }
  if (s.tokens == 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(s.tokens));
  switch (type) {
    case ElementType::kFloat32:
      RotaryKvWriteKernel<float><<<grid, kRotaryThreads, 0, st>>>(static_cast<float*>(qkv), positions, inv_freq, slots,
                                                       static_cast<float*>(k_cache), static_cast<float*>(v_cache), s);
      break;
    case ElementType::kBFloat16:
      RotaryKvWriteKernel<__nv_bfloat16><<<grid, kRotaryThreads, 0, st>>>(
          static_cast<__nv_bfloat16*>(qkv), positions, inv_freq, slots, static_cast<__nv_bfloat16*>(k_cache),
          static_cast<__nv_bfloat16*>(v_cache), s);
      break;
    case ElementType::kFloat16:
      RotaryKvWriteKernel<__half><<<grid, kRotaryThreads, 0, st>>>(static_cast<__half*>(qkv), positions, inv_freq, slots,
                                                        static_cast<__half*>(k_cache), static_cast<__half*>(v_cache), s);
      break;
    default: return false;
  }
  return cudaGetLastError() == cudaSuccess;
}

bool SwiGluCuda(const void* gate_up, void* out, int64_t rows, int64_t width, ElementType type, void* stream) {
  if (rows < 0 || width <= 0) return false;
  if (rows == 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  const int64_t total = rows * width;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256 < 65535 ? (total + 255) / 256 : 65535);
  switch (type) {
    case ElementType::kFloat32:
      SwiGluKernel<float><<<blocks, 256, 0, st>>>(static_cast<const float*>(gate_up), static_cast<float*>(out), rows, width);
      break;
    case ElementType::kBFloat16:
      SwiGluKernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(static_cast<const __nv_bfloat16*>(gate_up),
                                                          static_cast<__nv_bfloat16*>(out), rows, width);
      break;
    case ElementType::kFloat16:
      SwiGluKernel<__half><<<blocks, 256, 0, st>>>(static_cast<const __half*>(gate_up), static_cast<__half*>(out), rows,
                                                   width);
      break;
    default: return false;
  }
  return cudaGetLastError() == cudaSuccess;
}

bool GemvCudaTakes(int32_t rows, int64_t k, ElementType type, const void* x, const void* w) {
  const int64_t per_chunk = 16 / ElementBytes(type);
  return rows >= 1 && rows <= kGemvMaxRows && k > 0 && k % per_chunk == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

bool GemvCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
              ElementType type, void* stream) {
  if (n <= 0 || !GemvCudaTakes(rows, k, type, x, w)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32: return GemvTyped<float>(x, w, bias, y, rows, n, k, st);
    case ElementType::kBFloat16: return GemvTyped<__nv_bfloat16>(x, w, bias, y, rows, n, k, st);
    case ElementType::kFloat16: return GemvTyped<__half>(x, w, bias, y, rows, n, k, st);
  }
  return false;
}

}  // namespace glmserve::kernels
