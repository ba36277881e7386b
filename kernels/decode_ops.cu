#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/decode_epilogues.cuh"
#include "kernels/decode_ops.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.cuh"
#include "kernels/rms_norm_row.cuh"

namespace glmserve::kernels {
namespace {

// ---- Rotary + KV write: a warp per (token, head), a few heads a block ----
// A warp per head rather than a block per token: a decode step has few tokens (one per sequence),
// and a block walking all of a token's heads serially was most of the kernel's time (4.7 us at
// batch 64, 4.3 at batch 1 on an H100). A warp rather than a block of 64 threads per head: a query
// head rotates 32 pairs (GLM's rotary covers half of its 128 dims), and with a block a head a
// 128-row step (4,608 blocks) took two waves. Each lane owns pairs (2p, 2p + 1) of its head; the
// KV heads' warps also copy their rotated k and their v into the cache slot.
constexpr int kRotaryHeadThreads = 32;
constexpr int kRotaryHeadsPerBlock = 4;
constexpr int kRotaryThreads = kRotaryHeadThreads * kRotaryHeadsPerBlock;

template <typename T>
__global__ void __launch_bounds__(kRotaryThreads)
    RotaryKvWriteKernel(T* __restrict__ qkv, const int64_t* __restrict__ positions, const float* __restrict__ inv_freq,
                        const int64_t* __restrict__ slots, T* __restrict__ k_cache, T* __restrict__ v_cache,
                        RotaryKvShape s) {
  AllowDependentsThenWait();
  // Heads: the query heads, then the KV heads.
  const int t = blockIdx.x, head = blockIdx.y * kRotaryHeadsPerBlock + threadIdx.x / kRotaryHeadThreads;
  if (head >= s.num_heads + s.num_kv_heads) return;
  T* row = qkv + t * s.qkv_row_stride;
  T* x = row + static_cast<int64_t>(head) * s.head_dim;
  const int half_rotary = s.rotary_dim / 2, pairs = (s.head_dim + 1) / 2;
  const bool kv_head = head >= s.num_heads;
  const int64_t* components = s.frequency_component;
  const int64_t kv_size = static_cast<int64_t>(s.num_kv_heads) * s.head_dim;
  const int64_t cache_offset = kv_head ? slots[t] * kv_size + static_cast<int64_t>(head - s.num_heads) * s.head_dim : 0;
  const int limit = kv_head ? pairs : half_rotary;  // a query head's unrotated dims stay as they are
  for (int p = threadIdx.x % kRotaryHeadThreads; p < limit; p += kRotaryHeadThreads) {
    const int e = 2 * p, o = 2 * p + 1;  // o == head_dim for an odd head_dim's last element
    const bool has_odd = o < s.head_dim;
    T even = x[e], odd = has_odd ? x[o] : T();
    if (p < half_rotary) {
      float even_f = ToFloat(even), odd_f = ToFloat(odd);
      const float position = static_cast<float>(positions[components != nullptr ? components[p] * s.tokens + t : t]);
      RotatePair<T>(position, inv_freq[p], even_f, odd_f);
      even = FromFloat<T>(even_f);
      odd = FromFloat<T>(odd_f);
      x[e] = even;
      x[o] = odd;
    }
    if (kv_head) {
      const T* v = x + kv_size;
      k_cache[cache_offset + e] = even;
      v_cache[cache_offset + e] = v[e];
      if (has_odd) {
        k_cache[cache_offset + o] = odd;
        v_cache[cache_offset + o] = v[o];
      }
    }
  }
}

// ---- Vision rotary: one block per row, a thread per (head, pair) ----
constexpr int kRotateHalfThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kRotateHalfThreads)
    RotateHalfKernel(const T* __restrict__ x, int64_t x_row_stride, const float* __restrict__ cos,
                     const float* __restrict__ sin, T* __restrict__ out, int32_t heads, int32_t head_dim) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  const float* c = cos + r * head_dim;
  const float* sn = sin + r * head_dim;
  for (int k = threadIdx.x; k < heads * half; k += kRotateHalfThreads) {
    const int h = k / half, i = k % half;
    const T* in = x + r * x_row_stride + static_cast<int64_t>(h) * head_dim;
    T* o = out + (r * heads + h) * head_dim;
    const float first = ToFloat(in[i]), second = ToFloat(in[i + half]);
    // __f*_rn: each product and sum rounded in fp32 as the separate ATen ops round them.
    o[i] = FromFloat<T>(__fadd_rn(__fmul_rn(first, c[i]), -__fmul_rn(second, sn[i])));
    o[i + half] = FromFloat<T>(__fadd_rn(__fmul_rn(second, c[i + half]), __fmul_rn(first, sn[i + half])));
  }
}

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t rows, int64_t width) {
  AllowDependentsThenWait();
  const int64_t total = rows * width;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / width, c = i - r * width;
    out[i] = FromFloat<T>(SwiGlu<T>(ToFloat(gate_up[r * 2 * width + c]), ToFloat(gate_up[r * 2 * width + width + c])));
  }
}

// The same with 16-byte loads and stores and a row per grid row (no 64-bit division per
// element): for widths that are a multiple of a 16-byte chunk and 16-byte aligned rows, which
// GLM's intermediate sizes are. 4.8 us at batch 64 with the scalar kernel.
constexpr int kSwiGluThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kSwiGluThreads)
    SwiGluChunkKernel(const T* __restrict__ gate_up, T* __restrict__ out, int64_t width) {
  constexpr int E = Chunk16<T>::kElements;
  AllowDependentsThenWait();
  const int64_t chunks = width / E;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kSwiGluThreads + threadIdx.x;
  if (c >= chunks) return;
  const int64_t r = blockIdx.y;
  const uint4* gate4 = reinterpret_cast<const uint4*>(gate_up + r * 2 * width);
  float gate[E], up[E], y[E];
  Chunk16<T>::ToFloats(__ldcs(gate4 + c), gate);
  Chunk16<T>::ToFloats(__ldcs(gate4 + chunks + c), up);
#pragma unroll
  for (int e = 0; e < E; ++e) y[e] = SwiGlu<T>(gate[e], up[e]);
  reinterpret_cast<uint4*>(out + r * width)[c] = Chunk16<T>::FromFloats(y);
}

template <typename T>
cudaError_t LaunchSwiGlu(const void* gate_up, void* out, int64_t rows, int64_t width, cudaStream_t stream) {
  const T* in = static_cast<const T*>(gate_up);
  T* y = static_cast<T*>(out);
  constexpr int E = Chunk16<T>::kElements;
  const int64_t chunk_blocks = (width / E + kSwiGluThreads - 1) / kSwiGluThreads;
  if (width % E == 0 && reinterpret_cast<uintptr_t>(in) % 16 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
      rows <= 65535 && chunk_blocks <= 0x7fffffff) {
    return LaunchKernel(SwiGluChunkKernel<T>, dim3(static_cast<unsigned>(chunk_blocks), static_cast<unsigned>(rows)),
                        dim3(kSwiGluThreads), 0, stream, in, y, width);
  }
  const int64_t total = rows * width;
  const unsigned blocks = static_cast<unsigned>((total + 255) / 256 < 65535 ? (total + 255) / 256 : 65535);
  return LaunchKernel(SwiGluKernel<T>, dim3(blocks), dim3(256), 0, stream, in, y, rows, width);
}

// ---- L2 prefetch: a weight asked of L2 while short kernels leave HBM idle ----
constexpr int64_t kPrefetchChunkBytes = int64_t{1} << 20;

__global__ void __launch_bounds__(32) L2PrefetchKernel(const char* __restrict__ data, int64_t bytes, bool early) {
  // The next kernel may be resident at once; this one ends only after the one before it has (so
  // a kernel after this that reads that one's output still waits for it). The weight is asked for
  // after that end, or with `early` at once, against the tail of the kernel before.
  AllowDependentLaunch();
  if (!early) WaitForPrerequisiteGrid();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  for (int64_t offset = static_cast<int64_t>(threadIdx.x) * kPrefetchChunkBytes; offset < bytes;
       offset += 32 * kPrefetchChunkBytes) {
    const int64_t left = bytes - offset;
    const auto size = static_cast<uint32_t>(left < kPrefetchChunkBytes ? left : kPrefetchChunkBytes);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(data + offset), "r"(size) : "memory");
  }
#endif
  if (early) WaitForPrerequisiteGrid();
}

// ---- GEMV: each warp owns R output rows and streams their weights once with 16-byte loads ----
constexpr int kGemvWarps = 8;

// The add+RMSNorm a GEMV may do first (NormPrologue): its input row is RMSNorm(residual + delta)
// * weight, computed by every block into shared memory; block 0 writes residual + delta to
// residual_out (another buffer: the other blocks still read residual).
template <typename T>
struct GemvNorm {
  const T* delta = nullptr;         // may be null: the residual alone is normalised
  const T* delta_weight = nullptr;  // the delta's own norm first (sandwich norms), or null
  const T* residual = nullptr;
  T* residual_out = nullptr;
  const T* weight = nullptr;
  float eps = 0.0f;
};

// What a GEMV does with its sums. kStore: y = sum (+ bias), rounded. kSwiGlu (R = 2): the weight
// is gate_up's, [2 I, k]; warp j takes rows j and I + j and writes up * silu(gate) of its two
// rounded sums to y [M, I]: the GEMV then the SwiGLU kernel, bit for bit, in one launch.
// kRotaryKv (M = 1, R = 2): the weight is qkv's; warp j takes rows 2 j and 2 j + 1, a pair of one
// head, stores them rotated as the rotary kernel would and writes the k and v heads' pairs to the
// caches: the GEMV then RotaryKvWriteCuda, bit for bit.
enum class GemvEpilogue { kStore, kSwiGlu, kRotaryKv };

// M input rows, R weight rows per warp, U 16-byte loads per lane and row in flight. The weights
// (which no kernel of a step writes) are read before the wait for the kernel before this one;
// x and y only after it. Only the first loads go early: asking L2 for the rest of the row as well
// made a batch-1 step slower (6.08 vs 5.57 ms, H200). One row: four blocks an SM (32 warps' loads
// in flight) bound the registers to 64, which the fused prologue and epilogues would pass.
template <typename T, int M, int R, int U, GemvEpilogue Epilogue = GemvEpilogue::kStore, bool NormPrologue = false>
__global__ void __launch_bounds__(kGemvWarps * 32, M == 1 ? 4 : 1)
    GemvKernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias, T* __restrict__ y,
               int64_t n, int64_t k, GemvNorm<T> norm, GemvRotary<T> rotary) {
  constexpr bool SwiGluPairs = Epilogue == GemvEpilogue::kSwiGlu;
  static_assert(Epilogue == GemvEpilogue::kStore || R == 2, "a SwiGLU or rotary pair is two weight rows");
  static_assert(Epilogue != GemvEpilogue::kRotaryKv || M == 1, "the rotary epilogue is one token's");
  static_assert(!NormPrologue || (M == 1 && kGemvWarps * 32 == kNormRowThreads), "the norm is one row's, a block's");
  constexpr int E = 16 / sizeof(T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t half = n / 2;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * (SwiGluPairs ? 1 : R);
  const bool has_rows = row0 < (SwiGluPairs ? half : n);
  if (!NormPrologue && !has_rows) return;  // with the norm every warp of the block takes part in it
  // Weight row of the warp's r-th sum.
  auto row_of = [&](int r) { return SwiGluPairs ? row0 + r * half : row0 + r; };
  const int64_t chunks = k / E;
  const uint4* x4 = reinterpret_cast<const uint4*>(x);
  const uint4* w4 = reinterpret_cast<const uint4*>(w);
  uint4 wv[U][R];
  auto load = [&](int64_t c0) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = c0 + 32 * u;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        // Weights are read once per step: stream them past L1 so x stays cached.
        wv[u][r] = c < chunks && row_of(r) < n ? __ldcs(w4 + row_of(r) * chunks + c) : make_uint4(0, 0, 0, 0);
      }
    }
  };
  load(lane);
  AllowDependentLaunch();
  WaitForPrerequisiteGrid();
  extern __shared__ uint4 normed_x[];  // NormPrologue: the input row, k / E chunks
  if constexpr (NormPrologue) {
    __shared__ float scratch[kNormRowThreads / 32];
    AddRmsNormRow<T, /*kHeld=*/false>(
        reinterpret_cast<const uint4*>(norm.delta), reinterpret_cast<const uint4*>(norm.delta_weight),
        reinterpret_cast<const uint4*>(norm.residual),
        blockIdx.x == 0 ? reinterpret_cast<uint4*>(norm.residual_out) : nullptr,
        reinterpret_cast<const uint4*>(norm.weight), normed_x, static_cast<int>(chunks), k, norm.eps, scratch);
    __syncthreads();
    x4 = normed_x;
    if (!has_rows) return;
  }
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  for (int64_t c0 = lane; c0 < chunks;) {
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
        Chunk16<T>::ToFloats(NormPrologue ? x4[c] : __ldg(x4 + m * chunks + c), xf);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int e = 0; e < E; ++e) acc[m][r] = fmaf(xf[e], wf[r][e], acc[m][r]);
      }
    }
    c0 += 32 * U;
    if (c0 < chunks) load(c0);
  }
#pragma unroll
  for (int m = 0; m < M; ++m) {
    if constexpr (SwiGluPairs) {
      float rounded[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float total = WarpSum(acc[m][r]);
        rounded[r] = ToFloat(FromFloat<T>(bias != nullptr ? total + ToFloat(bias[row_of(r)]) : total));
      }
      if (lane == 0) y[m * half + row0] = FromFloat<T>(SwiGlu<T>(rounded[0], rounded[1]));
    } else if constexpr (Epilogue == GemvEpilogue::kRotaryKv) {
      T pair[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float total = WarpSum(acc[m][r]);
        pair[r] = FromFloat<T>(bias != nullptr && row0 + r < n ? total + ToFloat(bias[row0 + r]) : total);
      }
      if (lane == 0) RotaryKvPair(rotary, row0, pair[0], pair[1], y, n);
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float total = WarpSum(acc[m][r]);
        if (lane == 0 && row0 + r < n) {
          y[m * n + row0 + r] = FromFloat<T>(bias != nullptr ? total + ToFloat(bias[row0 + r]) : total);
        }
      }
    }
  }
}

template <typename T, int M, int R, int U, GemvEpilogue Epilogue = GemvEpilogue::kStore, bool NormPrologue = false>
bool LaunchGemv(const void* x, const void* w, const void* bias, void* y, int64_t n, int64_t k, cudaStream_t stream,
                const GemvNorm<T>& norm = {}, const GemvRotary<T>& rotary = {}) {
  constexpr bool SwiGluPairs = Epilogue == GemvEpilogue::kSwiGlu;
  // A warp's outputs: R rows, or one SwiGLU pair of the n / 2 it writes.
  const int64_t rows_per_block = int64_t{kGemvWarps} * (SwiGluPairs ? 1 : R);
  const int64_t outputs = SwiGluPairs ? n / 2 : n;
  const int64_t blocks = (outputs + rows_per_block - 1) / rows_per_block;
  const size_t smem = NormPrologue ? static_cast<size_t>(k) * sizeof(T) : 0;
  return LaunchKernel(GemvKernel<T, M, R, U, Epilogue, NormPrologue>, dim3(static_cast<unsigned>(blocks)),
                      dim3(kGemvWarps * 32), smem, stream, static_cast<const T*>(x), static_cast<const T*>(w),
                      static_cast<const T*>(bias), static_cast<T*>(y), n, k, norm, rotary) == cudaSuccess;
}

template <typename T>
bool GemvTyped(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
               cudaStream_t st) {
  // Few rows: one weight row per warp and deep unrolling keep enough loads in flight; more rows
  // share each loaded weight chunk across R weight rows so x is re-read less.
  switch (rows) {
    case 1:
      return LaunchGemv<T, 1, 1, 8>(x, w, bias, y, n, k, st);
    case 2:
      return LaunchGemv<T, 2, 2, 4>(x, w, bias, y, n, k, st);
    case 3:
      return LaunchGemv<T, 3, 2, 4>(x, w, bias, y, n, k, st);
    case 4:
      return LaunchGemv<T, 4, 2, 4>(x, w, bias, y, n, k, st);
    case 5:
      return LaunchGemv<T, 5, 4, 2>(x, w, bias, y, n, k, st);
    case 6:
      return LaunchGemv<T, 6, 4, 2>(x, w, bias, y, n, k, st);
    case 7:
      return LaunchGemv<T, 7, 4, 2>(x, w, bias, y, n, k, st);
    case 8:
      return LaunchGemv<T, 8, 4, 2>(x, w, bias, y, n, k, st);
  }
  return false;
}

int ElementBytes(ElementType type) { return type == ElementType::kFloat32 ? 4 : 2; }

}  // namespace

bool RotaryKvWriteCuda(void* qkv, const int64_t* positions, const float* inv_freq, const int64_t* slots, void* k_cache,
                       void* v_cache, const RotaryKvShape& s, ElementType type, void* stream) {
  if (s.tokens < 0 || s.num_heads <= 0 || s.num_kv_heads <= 0 || s.head_dim <= 0 || s.rotary_dim < 0 ||
      s.rotary_dim % 2 != 0 || s.rotary_dim > s.head_dim ||
      s.qkv_row_stride < int64_t{s.num_heads + 2 * s.num_kv_heads} * s.head_dim) {
    return false;
  }
  if (s.tokens == 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  const int head_blocks = (s.num_heads + s.num_kv_heads + kRotaryHeadsPerBlock - 1) / kRotaryHeadsPerBlock;
  if (head_blocks > 65535) return false;
  const dim3 grid(static_cast<unsigned>(s.tokens), static_cast<unsigned>(head_blocks));
  switch (type) {
    case ElementType::kFloat32:
      return LaunchKernel(RotaryKvWriteKernel<float>, grid, dim3(kRotaryThreads), 0, st, static_cast<float*>(qkv),
                          positions, inv_freq, slots, static_cast<float*>(k_cache), static_cast<float*>(v_cache),
                          s) == cudaSuccess;
    case ElementType::kBFloat16:
      return LaunchKernel(RotaryKvWriteKernel<__nv_bfloat16>, grid, dim3(kRotaryThreads), 0, st,
                          static_cast<__nv_bfloat16*>(qkv), positions, inv_freq, slots,
                          static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache), s) == cudaSuccess;
    case ElementType::kFloat16:
      return LaunchKernel(RotaryKvWriteKernel<__half>, grid, dim3(kRotaryThreads), 0, st, static_cast<__half*>(qkv),
                          positions, inv_freq, slots, static_cast<__half*>(k_cache), static_cast<__half*>(v_cache),
                          s) == cudaSuccess;
  }
  return false;
}

bool RotateHalfCuda(const void* x, int64_t x_row_stride, const float* cos, const float* sin, void* out, int64_t rows,
                    int32_t heads, int32_t head_dim, ElementType type, void* stream) {
  if (rows < 0 || heads <= 0 || head_dim <= 0 || head_dim % 2 != 0 || x_row_stride < int64_t{heads} * head_dim ||
      rows > 0x7fffffff) {
    return false;
  }
  if (rows == 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  const auto blocks = static_cast<unsigned>(rows);
  switch (type) {
    case ElementType::kFloat32:
      RotateHalfKernel<float><<<blocks, kRotateHalfThreads, 0, st>>>(static_cast<const float*>(x), x_row_stride, cos,
                                                                     sin, static_cast<float*>(out), heads, head_dim);
      break;
    case ElementType::kBFloat16:
      RotateHalfKernel<__nv_bfloat16>
          <<<blocks, kRotateHalfThreads, 0, st>>>(static_cast<const __nv_bfloat16*>(x), x_row_stride, cos, sin,
                                                  static_cast<__nv_bfloat16*>(out), heads, head_dim);
      break;
    case ElementType::kFloat16:
      RotateHalfKernel<__half><<<blocks, kRotateHalfThreads, 0, st>>>(static_cast<const __half*>(x), x_row_stride, cos,
                                                                      sin, static_cast<__half*>(out), heads, head_dim);
      break;
    default:
      return false;
  }
  return cudaGetLastError() == cudaSuccess;
}

bool SwiGluCuda(const void* gate_up, void* out, int64_t rows, int64_t width, ElementType type, void* stream) {
  if (rows < 0 || width <= 0) return false;
  if (rows == 0) return true;
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32:
      return LaunchSwiGlu<float>(gate_up, out, rows, width, st) == cudaSuccess;
    case ElementType::kBFloat16:
      return LaunchSwiGlu<__nv_bfloat16>(gate_up, out, rows, width, st) == cudaSuccess;
    case ElementType::kFloat16:
      return LaunchSwiGlu<__half>(gate_up, out, rows, width, st) == cudaSuccess;
  }
  return false;
}

bool L2PrefetchCuda(const void* data, int64_t bytes, bool early, void* stream) {
  // Bulk prefetches take 16-byte aligned addresses and sizes.
  if (data == nullptr || bytes <= 0 || reinterpret_cast<uintptr_t>(data) % 16 != 0) return false;
  const int64_t aligned = bytes / 16 * 16;
  if (aligned == 0) return true;
  return LaunchKernel(L2PrefetchKernel, dim3(1), dim3(32), 0, static_cast<cudaStream_t>(stream),
                      static_cast<const char*>(data), aligned, early) == cudaSuccess;
}

bool GemvCudaTakes(int32_t rows, int64_t k, ElementType type, const void* x, const void* w) {
  const int64_t per_chunk = 16 / ElementBytes(type);
  return rows >= 1 && rows <= kGemvMaxRows && k > 0 && k % per_chunk == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

namespace {
template <typename T>
bool LaunchGemvAddRmsNorm(const GemvNorm<T>& norm, const void* w, const void* bias, void* y, int64_t n, int64_t k,
                          bool swiglu, const GemvRotaryKvArgs* rotary_kv, cudaStream_t st) {
  if (swiglu) return LaunchGemv<T, 1, 2, 4, GemvEpilogue::kSwiGlu, true>(nullptr, w, bias, y, n, k, st, norm);
  if (rotary_kv != nullptr) {
    return LaunchGemv<T, 1, 2, 4, GemvEpilogue::kRotaryKv, true>(nullptr, w, bias, y, n, k, st, norm,
                                                                 GemvRotaryOf<T>(*rotary_kv));
  }
  return LaunchGemv<T, 1, 1, 8, GemvEpilogue::kStore, true>(nullptr, w, bias, y, n, k, st, norm);
}

template <typename T>
GemvNorm<T> MakeGemvNorm(const void* delta, const void* delta_weight, const void* residual, void* residual_out,
                         const void* norm_weight, float eps) {
  GemvNorm<T> norm;
  norm.delta = static_cast<const T*>(delta);
  norm.delta_weight = static_cast<const T*>(delta_weight);
  norm.residual = static_cast<const T*>(residual);
  norm.residual_out = static_cast<T*>(residual_out);
  norm.weight = static_cast<const T*>(norm_weight);
  norm.eps = eps;
  return norm;
}

bool RotaryKvArgsFit(const GemvRotaryKvArgs& a, int64_t n) {
  return a.positions != nullptr && a.slot != nullptr && a.k_cache != nullptr && a.v_cache != nullptr &&
         GemvRotaryKvShapeFits(a.shape, a.inv_freq != nullptr, n);
}
}  // namespace

bool GemvAddRmsNormCuda(const void* delta, const void* delta_weight, const void* residual, void* residual_out,
                        const void* norm_weight, float eps, const void* w, const void* bias, void* y, int64_t n,
                        int64_t k, bool swiglu, const GemvRotaryKvArgs* rotary_kv, ElementType type, void* stream) {
  const int64_t per_chunk = 16 / ElementBytes(type);
  auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (n <= 0 || k <= 0 || k % per_chunk != 0 || k / per_chunk > kGemvAddRmsNormMaxChunks || residual == nullptr ||
      norm_weight == nullptr || w == nullptr || (delta_weight != nullptr && delta == nullptr) ||
      (delta != nullptr && residual_out == nullptr) || (swiglu && n % 2 != 0) ||
      (rotary_kv != nullptr && (swiglu || !RotaryKvArgsFit(*rotary_kv, n))) || !aligned(delta) ||
      !aligned(delta_weight) || !aligned(residual) || !aligned(residual_out) || !aligned(norm_weight) || !aligned(w)) {
    return false;
  }
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32:
      return LaunchGemvAddRmsNorm<float>(
          MakeGemvNorm<float>(delta, delta_weight, residual, residual_out, norm_weight, eps), w, bias, y, n, k, swiglu,
          rotary_kv, st);
    case ElementType::kBFloat16:
      return LaunchGemvAddRmsNorm<__nv_bfloat16>(
          MakeGemvNorm<__nv_bfloat16>(delta, delta_weight, residual, residual_out, norm_weight, eps), w, bias, y, n, k,
          swiglu, rotary_kv, st);
    case ElementType::kFloat16:
      return LaunchGemvAddRmsNorm<__half>(
          MakeGemvNorm<__half>(delta, delta_weight, residual, residual_out, norm_weight, eps), w, bias, y, n, k, swiglu,
          rotary_kv, st);
  }
  return false;
}

bool GemvSwiGluCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                    ElementType type, void* stream) {
  if (rows != 1 || n <= 0 || n % 2 != 0 || !GemvCudaTakes(rows, k, type, x, w)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  // Two rows a warp: half the one-row GEMV's unrolling keeps as many loads in flight.
  switch (type) {
    case ElementType::kFloat32:
      return LaunchGemv<float, 1, 2, 4, GemvEpilogue::kSwiGlu>(x, w, bias, y, n, k, st);
    case ElementType::kBFloat16:
      return LaunchGemv<__nv_bfloat16, 1, 2, 4, GemvEpilogue::kSwiGlu>(x, w, bias, y, n, k, st);
    case ElementType::kFloat16:
      return LaunchGemv<__half, 1, 2, 4, GemvEpilogue::kSwiGlu>(x, w, bias, y, n, k, st);
  }
  return false;
}

bool GemvCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
              ElementType type, void* stream) {
  if (n <= 0 || !GemvCudaTakes(rows, k, type, x, w)) return false;
  auto st = static_cast<cudaStream_t>(stream);
  switch (type) {
    case ElementType::kFloat32:
      return GemvTyped<float>(x, w, bias, y, rows, n, k, st);
    case ElementType::kBFloat16:
      return GemvTyped<__nv_bfloat16>(x, w, bias, y, rows, n, k, st);
    case ElementType::kFloat16:
      return GemvTyped<__half>(x, w, bias, y, rows, n, k, st);
  }
  return false;
}

}  // namespace glmserve::kernels
