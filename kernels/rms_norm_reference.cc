#include <cmath>

#include "kernels/rms_norm.h"

namespace glmserve::kernels {

void FusedAddRmsNormReference(const float* x, float* residual, const float* weight, float* out, int64_t rows,
                              int64_t hidden, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* res = residual + r * hidden;
    double sum_squares = 0;
    for (int64_t i = 0; i < hidden; ++i) {
      res[i] += x[r * hidden + i];
      sum_squares += static_cast<double>(res[i]) * res[i];
    }
    const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_squares / hidden) + eps);
    for (int64_t i = 0; i < hidden; ++i) out[r * hidden + i] = weight[i] * (res[i] * inv_rms);
  }
}

}  // namespace glmserve::kernels
