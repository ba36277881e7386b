// CPU references against hand-computed values; each CUDA kernel against its reference where a
// GPU exists (skipped otherwise, e.g. in CI).
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/rms_norm.h"

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
#include <cuda_runtime.h>
#endif

namespace glmserve::kernels {
namespace {

TEST(FusedAddRmsNorm, ReferenceMatchesHandComputedRow) {
  // residual [1, 2] + x [2, 1] = [3, 3]; rms = 3; weight [1, 2] -> out [1, 2]
  std::vector<float> x = {2, 1}, residual = {1, 2}, weight = {1, 2}, out(2);
  FusedAddRmsNormReference(x.data(), residual.data(), weight.data(), out.data(), 1, 2, 0.0f);
  EXPECT_FLOAT_EQ(residual[0], 3.0f);
  EXPECT_FLOAT_EQ(residual[1], 3.0f);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], 2.0f);
}

TEST(FusedAddRmsNorm, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  const int64_t rows = 37, hidden = 4096;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * hidden), residual(rows * hidden), weight(hidden);
  for (float& v : x) v = normal(rng);
  for (float& v : residual) v = normal(rng);
  for (float& v : weight) v = 1.0f + 0.1f * normal(rng);
  std::vector<float> want_res = residual, want(rows * hidden), got_res(rows * hidden), got(rows * hidden);
  FusedAddRmsNormReference(x.data(), want_res.data(), weight.data(), want.data(), rows, hidden, 1e-5f);
  float *dx, *dres, *dw, *dout;
  const size_t bytes = rows * hidden * sizeof(float);
  ASSERT_EQ(cudaMalloc(&dx, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dres, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dw, hidden * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, bytes), cudaSuccess);
  cudaMemcpy(dx, x.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(dres, residual.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(dw, weight.data(), hidden * sizeof(float), cudaMemcpyHostToDevice);
  ASSERT_TRUE(FusedAddRmsNormCuda(dx, dres, dw, dout, rows, hidden, 1e-5f, nullptr));
  cudaMemcpy(got.data(), dout, bytes, cudaMemcpyDeviceToHost);
  cudaMemcpy(got_res.data(), dres, bytes, cudaMemcpyDeviceToHost);
  cudaFree(dx); cudaFree(dres); cudaFree(dw); cudaFree(dout);
  for (int64_t i = 0; i < rows * hidden; ++i) {
    ASSERT_NEAR(got_res[i], want_res[i], 1e-6f) << i;
    ASSERT_NEAR(got[i], want[i], 1e-4f * std::abs(want[i]) + 1e-5f) << i;
  }
#endif
}

}  // namespace
}  // namespace glmserve::kernels
