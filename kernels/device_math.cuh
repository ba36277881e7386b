// Helpers shared by the kernels: element conversions (fp32 / bf16 / fp16 <-> fp32, and the
// rounding an ATen op on T tensors applies), 16-byte chunk unpacking, warp reductions, cp.async,
// and launches with programmatic dependent launch. Included by the .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace glmserve::kernels {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T FromFloat(float v);
template <> __device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half(v); }

// The value an ATen op on T tensors would store: computed in fp32, rounded to T.
template <typename T> __device__ __forceinline__ float RoundTo(float v) { return ToFloat(FromFloat<T>(v)); }

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

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Programmatic dependent launch (sm_90): a kernel launched by LaunchKernel may be scheduled
// while the kernel before it on the stream is still finishing, instead of after it drains; it
// must call WaitForPriorKernel() before touching global memory, which returns once the prior
// kernel has completed and its writes are visible (at once when there is no such dependency).
// Between the small kernels of a decode step this hides most of the launch gap.
// GLMSERVE_CUDA_PDL=0 launches every kernel plainly (measurements, diagnosis).
__device__ __forceinline__ void WaitForPriorKernel() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

inline bool ProgrammaticLaunchEnabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("GLMSERVE_CUDA_PDL");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled;
}

template <typename... KernelArgs, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t shared_bytes,
                         cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = ProgrammaticLaunchEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace glmserve::kernels
