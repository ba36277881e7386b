// Stand-ins when the build has no CUDA toolkit: the kernels report themselves unavailable.
#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"

namespace glmserve::kernels {
bool FusedAddRmsNormCuda(const float*, float*, const float*, float*, int64_t, int64_t, float, void*) { return false; }
bool CudaKernelsAvailable() { return false; }
bool FusedAddRmsNormCudaTyped(const void*, void*, const void*, void*, int64_t, int64_t, float, int, void*) {
  return false;
}
bool PagedAttentionDecodeCuda(const void*, const void*, const void*, const int32_t*, const int32_t*, void*,
                              const PagedAttentionShape&, ElementType, void*) {
  return false;
}
int32_t PagedAttentionMaxContext() { return 0; }
}  // namespace glmserve::kernels
