// Shared-memory mbarriers and the bulk copies (TMA) that complete on them, sm_90, for the kernels
// that stream a weight through shared memory with a producer warp (skinny_gemm.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace glmserve::kernels {

__device__ __forceinline__ void BarrierInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void BarrierExpectBytes(uint32_t bar, int bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Whether the barrier's phase with this parity has completed (the hardware may hold the thread a
// while before it says no).
__device__ __forceinline__ bool BarrierTryWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
               : "=r"(done)
               : "r"(bar), "r"(parity)
               : "memory");
  return done != 0;
}
// Returns once the barrier's phase with this parity has completed.
__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  while (!BarrierTryWait(bar, parity)) {
  }
}
__device__ __forceinline__ uint64_t EvictFirstPolicy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint64_t EvictLastPolicy() {
  uint64_t policy;
  asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;\n" : "=l"(policy));
  return policy;
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from global memory into shared
// memory by the tensor memory accelerator, its lines kept in L2 by `policy`; completes on `bar`.
__device__ __forceinline__ void BulkCopyToShared(uint32_t smem, const void* global, uint32_t bytes, uint32_t bar,
                                                 uint64_t policy) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;\n" ::
          "r"(smem),
      "l"(reinterpret_cast<uint64_t>(global)), "r"(bytes), "r"(bar), "l"(policy)
      : "memory");
}

}  // namespace glmserve::kernels
