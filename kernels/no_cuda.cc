// Stand-ins when the build has no CUDA toolkit: the kernels report themselves unavailable.
#include "kernels/rms_norm.h"

namespace glmserve::kernels {
bool FusedAddRmsNormCuda(const float*, float*, const float*, float*, int64_t, int64_t, float, void*) { return false; }
bool CudaKernelsAvailable() { return false; }
}  // namespace glmserve::kernels
