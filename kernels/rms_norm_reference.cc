#include <cmath>

#include "kernels/rms_norm.h"

namespace glmserve::kernels {

namespace {
float InverseRms(const float* row, int64_t hidden, float eps) {
  double sum_squares = 0;
  for (int64_t i = 0; i < hidden; ++i) sum_squares += static_cast<double>(row[i]) * row[i];
  return 1.0f / std::sqrt(static_cast<float>(sum_squares / hidden) + eps);
}
}  // namespace

void FusedAddRmsNormReference(const float* x, float* residual, const float* weight, float* out, int64_t rows,
                              int64_t hidden, float eps) {
  FusedNormAddRmsNormReference(x, nullptr, residual, weight, out, rows, hidden, eps);
}

void FusedNormAddRmsNormReference(const float* x, const float* x_weight, float* residual, const float* weight,
                                  float* out, int64_t rows, int64_t hidden, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    float* res = residual + r * hidden;
    const float* delta = x + r * hidden;
    const float delta_inv_rms = x_weight != nullptr ? InverseRms(delta, hidden, eps) : 0.0f;
    for (int64_t i = 0; i < hidden; ++i) {
      res[i] += x_weight != nullptr ? x_weight[i] * (delta[i] * delta_inv_rms) : delta[i];
    }
    const float inv_rms = InverseRms(res, hidden, eps);
    for (int64_t i = 0; i < hidden; ++i) out[r * hidden + i] = weight[i] * (res[i] * inv_rms);
  }
}

}  // namespace glmserve::kernels
