// CPU references against hand-computed values; each CUDA kernel against its reference where a
// GPU exists (skipped otherwise, e.g. in CI).
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/paged_attention.h"
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

TEST(FusedNormAddRmsNorm, ReferenceNormalisesTheDeltaBeforeAdding) {
  // x [3, 4]: rms sqrt(12.5) -> x / rms = [0.8485, 1.1314]; times x_weight [1, 0.5] = [0.8485,
  // 0.5657]; residual [1, 1] + that = [1.8485, 1.5657]; its rms 1.7129 -> [1.0791, 0.9140]; times
  // weight [2, 1].
  std::vector<float> x = {3, 4}, x_weight = {1, 0.5f}, residual = {1, 1}, weight = {2, 1}, out(2);
  FusedNormAddRmsNormReference(x.data(), x_weight.data(), residual.data(), weight.data(), out.data(), 1, 2, 0.0f);
  EXPECT_NEAR(residual[0], 1.848528f, 1e-5f);
  EXPECT_NEAR(residual[1], 1.565685f, 1e-5f);
  EXPECT_NEAR(out[0], 2.158292f, 1e-5f);
  EXPECT_NEAR(out[1], 0.914026f, 1e-5f);
}

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
// Runs the fp32 CUDA add+RMSNorm (the fp32 entry point, or the typed one with element type 0 and
// an optional null delta) on random rows and compares both outputs with the reference.
void ExpectFusedAddRmsNormMatchesReference(int64_t rows, int64_t hidden, bool with_delta, bool typed_entry,
                                           uint32_t seed, bool with_delta_weight = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * hidden, 0.0f), residual(rows * hidden), weight(hidden);
  if (with_delta) {
    for (float& v : x) v = normal(rng);
  }
  for (float& v : residual) v = normal(rng);
  for (float& v : weight) v = 1.0f + 0.1f * normal(rng);
  std::vector<float> delta_weight(hidden);
  for (float& v : delta_weight) v = 0.5f + 0.2f * normal(rng);
  std::vector<float> want_res = residual, want(rows * hidden), got(rows * hidden), got_res(rows * hidden);
  FusedNormAddRmsNormReference(x.data(), with_delta_weight ? delta_weight.data() : nullptr, want_res.data(),
                               weight.data(), want.data(), rows, hidden, 1e-5f);
  float *dx, *dres, *dw, *dout, *ddw;
  const size_t bytes = rows * hidden * sizeof(float);
  ASSERT_EQ(cudaMalloc(&dx, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dres, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dw, hidden * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dout, bytes), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&ddw, hidden * sizeof(float)), cudaSuccess);
  cudaMemcpy(ddw, delta_weight.data(), hidden * sizeof(float), cudaMemcpyHostToDevice);
  cudaMemcpy(dx, x.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(dres, residual.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(dw, weight.data(), hidden * sizeof(float), cudaMemcpyHostToDevice);
  const bool launched =
      with_delta_weight ? FusedNormAddRmsNormCudaTyped(dx, ddw, dres, dw, dout, rows, hidden, 1e-5f, 0, nullptr)
      : typed_entry
          ? FusedAddRmsNormCudaTyped(with_delta ? dx : nullptr, dres, dw, dout, rows, hidden, 1e-5f, 0, nullptr)
          : FusedAddRmsNormCuda(dx, dres, dw, dout, rows, hidden, 1e-5f, nullptr);
  cudaMemcpy(got.data(), dout, bytes, cudaMemcpyDeviceToHost);
  cudaMemcpy(got_res.data(), dres, bytes, cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dres);
  cudaFree(dw);
  cudaFree(dout);
  cudaFree(ddw);
  ASSERT_TRUE(launched);
  for (int64_t i = 0; i < rows * hidden; ++i) {
    ASSERT_NEAR(got_res[i], want_res[i], 1e-5f * std::abs(want_res[i]) + 1e-6f) << i;
    ASSERT_NEAR(got[i], want[i], 1e-4f * std::abs(want[i]) + 1e-5f) << i;
  }
}
#endif

TEST(FusedAddRmsNorm, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  ExpectFusedAddRmsNormMatchesReference(37, 4096, /*with_delta=*/true, /*typed_entry=*/false, 7);
#endif
}

TEST(FusedAddRmsNorm, TypedFloat32RowWidthsOnBothKernelPaths) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  // 128 and 4096 fit one block's registers (the vector path); 4098 is not a multiple of a
  // 16-byte chunk and 40000 is too wide: the generic path. Norm-only (x null) too.
  for (int64_t hidden : {int64_t{128}, int64_t{4096}, int64_t{4098}, int64_t{40000}}) {
    for (bool with_delta : {true, false}) {
      SCOPED_TRACE(testing::Message() << "hidden " << hidden << " delta " << with_delta);
      ExpectFusedAddRmsNormMatchesReference(3, hidden, with_delta, /*typed_entry=*/true, static_cast<uint32_t>(hidden));
    }
  }
#endif
}

TEST(FusedNormAddRmsNorm, CudaMatchesReferenceOnBothKernelPaths) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  for (int64_t hidden : {int64_t{128}, int64_t{1536}, int64_t{4096}, int64_t{4098}, int64_t{40000}}) {
    SCOPED_TRACE(testing::Message() << "hidden " << hidden);
    ExpectFusedAddRmsNormMatchesReference(5, hidden, /*with_delta=*/true, /*typed_entry=*/true,
                                          static_cast<uint32_t>(hidden) + 1, /*with_delta_weight=*/true);
  }
#endif
}

TEST(PagedAttentionDecode, ReferenceSinglePositionReturnsItsValue) {
  // One position: softmax weight 1, so out = v of that position's KV head; block table picks
  // physical block 2 (slots 4..5 with block_size 2).
  PagedAttentionShape s{1, 2, 1, 2, 2, 1, 1, 0.5f};
  std::vector<float> q = {1, 2, 3, 4};
  std::vector<float> k(6 * 2, 0.0f), v(6 * 2, 0.0f);
  v[4 * 2 + 0] = 7;
  v[4 * 2 + 1] = -3;
  std::vector<int32_t> table = {2}, lens = {1};
  std::vector<float> out(4);
  PagedAttentionDecodeReference(q.data(), k.data(), v.data(), table.data(), lens.data(), out.data(), s);
  EXPECT_EQ(out, (std::vector<float>{7, -3, 7, -3}));  // both query heads share the one KV head
}

TEST(PagedAttentionDecode, ReferenceWeightsPositionsBySoftmax) {
  // Scores (scale 1): q.k = 0 and ln 3 -> weights 1/4, 3/4 over v = 4 and 8 -> 7.
  PagedAttentionShape s{1, 1, 1, 1, 1, 2, 2, 1.0f};
  std::vector<float> q = {1}, k = {0.0f, std::log(3.0f)}, v = {4, 8};
  std::vector<int32_t> table = {1, 0}, lens = {2};  // logical 0 -> slot 1, logical 1 -> slot 0
  std::vector<float> out(1);
  // Position 0 reads slot 1 (k = ln 3, v = 8), position 1 reads slot 0 (k = 0, v = 4).
  PagedAttentionDecodeReference(q.data(), k.data(), v.data(), table.data(), lens.data(), out.data(), s);
  EXPECT_NEAR(out[0], 0.75 * 8 + 0.25 * 4, 1e-6);
}

TEST(PagedAttentionDecode, ReferenceLeavesRowsOfContextZeroAlone) {
  // Row 0 attends its one position (out = v); row 1 has no context: its output stays as it was.
  PagedAttentionShape s{2, 1, 1, 2, 2, 1, 1, 0.5f};
  std::vector<float> q = {1, 2, 3, 4}, k(4 * 2, 0.0f), v(4 * 2, 0.0f);
  v[2 * 2 + 0] = 5;
  v[2 * 2 + 1] = 6;
  std::vector<int32_t> table = {1, 1}, lens = {1, 0};
  std::vector<float> out(4, -9.0f);
  PagedAttentionDecodeReference(q.data(), k.data(), v.data(), table.data(), lens.data(), out.data(), s);
  EXPECT_EQ(out, (std::vector<float>{5, 6, -9, -9}));
}

TEST(PagedAttentionDecode, CudaMatchesReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
#ifdef GLMSERVE_HAVE_CUDA_KERNELS
  PagedAttentionShape s{5, 8, 2, 128, 16, 40, 600, 1.0f / std::sqrt(128.0f)};
  const int64_t slots = 256 * s.block_size;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> q(s.batch * s.num_heads * s.head_dim), k(slots * s.num_kv_heads * s.head_dim), v(k.size());
  for (float& x : q) x = normal(rng);
  for (float& x : k) x = normal(rng);
  for (float& x : v) x = normal(rng);
  std::vector<int32_t> lens = {1, 17, 300, 599, 64};
  std::vector<int32_t> tables(s.batch * s.max_blocks_per_seq);
  std::vector<int32_t> blocks(256);
  for (int i = 0; i < 256; ++i) blocks[i] = i;
  std::shuffle(blocks.begin(), blocks.end(), rng);
  for (int i = 0; i < s.batch * s.max_blocks_per_seq; ++i) tables[i] = blocks[i % 256];
  std::vector<float> want(q.size()), got(q.size());
  PagedAttentionDecodeReference(q.data(), k.data(), v.data(), tables.data(), lens.data(), want.data(), s);
  float *dq, *dk, *dv, *dout;
  int32_t *dtables, *dlens;
  cudaMalloc(&dq, q.size() * 4);
  cudaMalloc(&dk, k.size() * 4);
  cudaMalloc(&dv, v.size() * 4);
  cudaMalloc(&dout, q.size() * 4);
  cudaMalloc(&dtables, tables.size() * 4);
  cudaMalloc(&dlens, lens.size() * 4);
  cudaMemcpy(dq, q.data(), q.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dk, k.data(), k.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dv, v.data(), v.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dtables, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dlens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice);
  ASSERT_TRUE(PagedAttentionDecodeCuda(dq, dk, dv, dtables, dlens, dout, s, ElementType::kFloat32, nullptr));
  cudaMemcpy(got.data(), dout, got.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(dq);
  cudaFree(dk);
  cudaFree(dv);
  cudaFree(dout);
  cudaFree(dtables);
  cudaFree(dlens);
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4f + 1e-4f * std::abs(want[i])) << i;
#endif
}

}  // namespace
}  // namespace glmserve::kernels
