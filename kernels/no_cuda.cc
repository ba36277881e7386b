// Stand-ins when the build has no CUDA toolkit: the kernels report themselves unavailable.
#include "kernels/decode_ops.h"
#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"
#include "kernels/sampling.h"
#include "kernels/tuned_gemm.h"

namespace glmserve::kernels {
bool FusedAddRmsNormCuda(const float*, float*, const float*, float*, int64_t, int64_t, float, void*) { return false; }
bool CudaKernelsAvailable() { return false; }
bool FusedAddRmsNormCudaTyped(const void*, void*, const void*, void*, int64_t, int64_t, float, int, void*) {
  return false;
}
bool FusedNormAddRmsNormCudaTyped(const void*, const void*, void*, const void*, void*, int64_t, int64_t, float, int,
                                  void*) {
  return false;
}
bool PagedAttentionDecodeCuda(const void*, const void*, const void*, const int32_t*, const int32_t*, void*,
                              const PagedAttentionShape&, ElementType, void*, void*) {
  return false;
}
size_t PagedAttentionWorkspaceBytes(const PagedAttentionShape&) { return 0; }
bool RotaryKvWriteCuda(void*, const int64_t*, const float*, const int64_t*, void*, void*, const RotaryKvShape&,
                       ElementType, void*) {
  return false;
}
bool RotateHalfCuda(const void*, int64_t, const float*, const float*, void*, int64_t, int32_t, int32_t, ElementType,
                    void*) {
  return false;
}
bool SwiGluCuda(const void*, void*, int64_t, int64_t, ElementType, void*) { return false; }
bool GemvCudaTakes(int32_t, int64_t, ElementType, const void*, const void*) { return false; }
bool GemvCuda(const void*, const void*, const void*, void*, int32_t, int64_t, int64_t, ElementType, void*) {
  return false;
}
bool L2PrefetchCuda(const void*, int64_t, bool, void*) { return false; }
bool GemvSwiGluCuda(const void*, const void*, const void*, void*, int32_t, int64_t, int64_t, ElementType, void*) {
  return false;
}
bool GemvAddRmsNormCuda(const void*, const void*, const void*, void*, const void*, float, const void*, const void*,
                        void*, int64_t, int64_t, bool, const GemvRotaryKvArgs*, ElementType, void*) {
  return false;
}
size_t SkinnyGemmWorkspaceBytes() { return 0; }
bool SkinnyGemmCudaTakes(int32_t, int64_t, int64_t, ElementType, const void*, const void*) { return false; }
bool SkinnyGemmCuda(const void*, const void*, const void*, void*, int32_t, int64_t, int64_t, ElementType, void*, void*,
                    SkinnyGemmMath) {
  return false;
}
int32_t PagedAttentionMaxContext() { return 0; }
bool SampleRowsCuda(const float*, int32_t, int32_t, const SamplingRow*, int32_t*, void*) { return false; }
bool ApplyPenaltiesCuda(float*, int32_t, int32_t, const PenaltyRow*, const int32_t*, const uint8_t*, const int32_t*,
                        void*) {
  return false;
}
bool CountTokensCuda(int32_t*, uint8_t*, int32_t, const int32_t*, const int32_t*, const uint8_t*, int32_t, void*) {
  return false;
}
std::unique_ptr<TunedGemm> TunedGemm::Create() { return nullptr; }
}  // namespace glmserve::kernels
