// Helpers shared by the kernels: element conversions (fp32 / bf16 / fp16 <-> fp32, and the
// rounding an ATen op on T tensors applies), 16-byte chunk unpacking, warp reductions, cp.async,
// and the current device's SM count. Included by the .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

namespace glmserve::kernels {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half(v);
}

// The value an ATen op on T tensors would store: computed in fp32, rounded to T.
template <typename T>
__device__ __forceinline__ float RoundTo(float v) {
  return ToFloat(FromFloat<T>(v));
}

// 16 bytes of T (8 bf16/fp16 or 4 fp32 elements) -> fp32, bf16/fp16 two at a time.
__device__ __forceinline__ void UnpackChunk(const uint4& raw, float* f, const float*) {
  const float4 v = *reinterpret_cast<const float4*>(&raw);
  f[0] = v.x;
  f[1] = v.y;
  f[2] = v.z;
  f[3] = v.w;
}
__device__ __forceinline__ void UnpackChunk(const uint4& raw, float* f, const __nv_bfloat16*) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(p[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ void UnpackChunk(const uint4& raw, float* f, const __half*) {
  const __half2* p = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __half22float2(p[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// 16 bytes of T (8 bf16/fp16 or 4 fp32 elements) <-> fp32.
template <typename T>
struct Chunk16 {
  static constexpr int kElements = 16 / sizeof(T);
  __device__ __forceinline__ static void ToFloats(const uint4& raw, float* f) {
    UnpackChunk(raw, f, static_cast<const T*>(nullptr));
  }
  __device__ __forceinline__ static uint4 FromFloats(const float* f) {
    uint4 raw;
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kElements; ++i) v[i] = FromFloat<T>(f[i]);
    return raw;
  }
};

// 16 bytes global -> shared without staging in registers (sm_80+); !valid fills zeros (`global`
// must still be a mapped address). Complete with cp.async.commit_group / wait_group.
__device__ __forceinline__ void CopyAsync16(uint32_t smem, const void* global, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(global), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CopyAsync16(void* smem, const void* global, bool valid) {
  CopyAsync16(static_cast<uint32_t>(__cvta_generic_to_shared(smem)), global, valid);
}
__device__ __forceinline__ void CopyAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `kPending` of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CopyAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// ldmatrix: 8x8 matrices of 16-bit elements from shared memory, lanes 8i .. 8i + 7 giving the
// row addresses of matrix i; .trans hands each thread the transposed elements.
__device__ __forceinline__ void LoadMatrixX4(uint32_t smem, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem));
}
__device__ __forceinline__ void LoadMatrixX4Trans(uint32_t smem, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem));
}
__device__ __forceinline__ void LoadMatrixX2(uint32_t smem, uint32_t (&r)[2]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem));
}

// c += a b on tensor cores, mma.m16n8k16 with fp32 accumulation: a the 16x16 A fragment (row
// major), b0/b1 the 16x8 B fragment (column major). Accumulator j of a lane is row lane / 4 +
// 8 (j / 2), column 2 (lane % 4) + j % 2.
// One asm string for both element types: `type` is "bf16" or "f16".
#define GLMSERVE_MMA_M16N8K16(type)                                                     \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." type "." type                   \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n" \
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <typename T>
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    GLMSERVE_MMA_M16N8K16("bf16");
  } else {
    GLMSERVE_MMA_M16N8K16("f16");
  }
}
#undef GLMSERVE_MMA_M16N8K16

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Multiprocessors of the current device, asked once per device; 0 when CUDA cannot say.
inline int DeviceSmCount() {
  static std::atomic<int> cached[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 0;
  int sms = cached[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) return 0;
    cached[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

}  // namespace glmserve::kernels
