// Rotary + KV write, SwiGLU, GEMV and the grouped split paged-attention kernels (CUDA cores and
// tensor cores): CPU references
// against hand-computed values (run everywhere), CUDA kernels against the references where a GPU
// exists (skipped otherwise, e.g. in CI).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/decode_ops.h"
#include "kernels/launch.h"
#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"
#include "kernels/tuned_gemm.h"
#include "tests/testutil/bf16.h"
#include "tests/testutil/fp16.h"

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
#include <cuda_runtime.h>
#endif

namespace glmserve::kernels {
namespace {

TEST(RotaryKvWrite, ReferenceRotatesPairsAndFillsTheCache) {
  // One token at position 2, one q head and one kv head of 4 dims, rotary on the first 2 dims,
  // inv_freq 0.5: the pair (1, 0) turns by 1 radian; dims 2..3 stay.
  RotaryKvShape s{1, 1, 1, 4, 2, 12};
  std::vector<float> qkv = {1, 0, 5, 6, /*k*/ 0, 1, 7, 8, /*v*/ 9, 10, 11, 12};
  const int64_t position = 2, slot = 1;
  const float inv_freq = 0.5f;
  std::vector<float> k_cache(8, 0.0f), v_cache(8, 0.0f);
  RotaryKvWriteReference(qkv.data(), &position, &inv_freq, &slot, k_cache.data(), v_cache.data(), s);
  EXPECT_NEAR(qkv[0], std::cos(1.0), 1e-6);
  EXPECT_NEAR(qkv[1], std::sin(1.0), 1e-6);
  EXPECT_EQ(qkv[2], 5);
  EXPECT_NEAR(qkv[4], -std::sin(1.0), 1e-6);  // (0, 1) turned by 1 radian
  EXPECT_NEAR(qkv[5], std::cos(1.0), 1e-6);
  EXPECT_EQ(std::vector<float>(k_cache.begin(), k_cache.begin() + 4), std::vector<float>(4, 0.0f));  // slot 0 untouched
  EXPECT_NEAR(k_cache[4], -std::sin(1.0), 1e-6);
  EXPECT_EQ(k_cache[6], 7);
  EXPECT_EQ(std::vector<float>(v_cache.begin() + 4, v_cache.end()), (std::vector<float>{9, 10, 11, 12}));
}

TEST(RotaryKvWrite, ReferenceTurnsEachFrequencyByItsPositionComponent) {
  // glm4v's 3-D rotary: one token with positions (temporal 0, height 2, width 4); frequency 0
  // follows the height (angle 2 * 0.5 = 1), frequency 1 the width (4 * 0.25 = 1).
  RotaryKvShape s{1, 1, 1, 4, 4, 12};
  const std::vector<int64_t> components = {1, 2};
  s.frequency_component = components.data();
  std::vector<float> qkv = {1, 0, 0, 1, /*k*/ 1, 0, 1, 0, /*v*/ 0, 0, 0, 0};
  const std::vector<int64_t> positions = {0, 2, 4};
  const std::vector<float> inv_freq = {0.5f, 0.25f};
  const int64_t slot = 0;
  std::vector<float> k_cache(4), v_cache(4);
  RotaryKvWriteReference(qkv.data(), positions.data(), inv_freq.data(), &slot, k_cache.data(), v_cache.data(), s);
  const float c = std::cos(1.0f), sn = std::sin(1.0f);
  EXPECT_NEAR(qkv[0], c, 1e-6);
  EXPECT_NEAR(qkv[1], sn, 1e-6);
  EXPECT_NEAR(qkv[2], -sn, 1e-6);  // (0, 1) turned by 1 radian
  EXPECT_NEAR(qkv[3], c, 1e-6);
  EXPECT_NEAR(k_cache[2], c, 1e-6);
  EXPECT_NEAR(k_cache[3], sn, 1e-6);
}

TEST(RotateHalf, ReferenceIsXCosPlusRotateHalfXSin) {
  // Two rows of one 4-dim head, 6 elements apart. Row 0: cos 0, sin 1 -> rotate_half(x) =
  // (-x2, -x3, x0, x1). Row 1: cos 1, sin 0 -> x.
  const std::vector<float> x = {1, 2, 3, 4, 99, 99, 5, 6, 7, 8, 99, 99};
  const std::vector<float> cos = {0, 0, 0, 0, 1, 1, 1, 1}, sin = {1, 1, 1, 1, 0, 0, 0, 0};
  std::vector<float> out(8);
  RotateHalfReference(x.data(), 6, cos.data(), sin.data(), out.data(), 2, 1, 4);
  EXPECT_EQ(out, (std::vector<float>{-3, -4, 1, 2, 5, 6, 7, 8}));
}

TEST(SwiGlu, ReferenceIsUpTimesSiluOfGate) {
  // gate 0 -> silu 0; gate ln 3 -> ln3 * 3/4; up 2 and 4.
  const float ln3 = std::log(3.0f);
  std::vector<float> gate_up = {0.0f, ln3, 2.0f, 4.0f}, out(2);
  SwiGluReference(gate_up.data(), out.data(), 1, 2);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 4.0f * ln3 * 0.75f, 1e-6);
}

TEST(Gemv, ReferenceMultipliesByTheTransposedWeight) {
  // x [2, 3], w [2, 3] (two output features), bias [10, 20].
  std::vector<float> x = {1, 2, 3, 4, 5, 6}, w = {1, 0, 0, 1, 1, 1}, bias = {10, 20}, y(4);
  GemvReference(x.data(), w.data(), bias.data(), y.data(), 2, 2, 3);
  EXPECT_EQ(y, (std::vector<float>{11, 26, 14, 35}));
}

#ifdef GLMSERVE_HAVE_CUDA_KERNELS
using testutil::FromBf16Bits;
using testutil::FromHalfBits;
using testutil::RoundToBf16;
using testutil::RoundToHalf;
using testutil::ToBf16Bits;
using testutil::ToHalfBits;

// A device copy of host data; the element type decides what the kernel sees (fp32, bf16, fp16).
class Device {
 public:
  Device(const std::vector<float>& host, ElementType type) : type_(type), count_(host.size()) {
    cudaMalloc(&ptr_, std::max<size_t>(1, count_) * bytes_per());
    if (type_ == ElementType::kFloat32) {
      cudaMemcpy(ptr_, host.data(), count_ * 4, cudaMemcpyHostToDevice);
    } else {
      std::vector<uint16_t> half(count_);
      for (size_t i = 0; i < count_; ++i) {
        half[i] = type_ == ElementType::kFloat16 ? ToHalfBits(host[i]) : ToBf16Bits(host[i]);
      }
      cudaMemcpy(ptr_, half.data(), count_ * 2, cudaMemcpyHostToDevice);
    }
  }
  template <typename I>
  explicit Device(const std::vector<I>& host) : type_(ElementType::kFloat32), count_(host.size()) {
    cudaMalloc(&ptr_, std::max<size_t>(1, count_) * sizeof(I));
    cudaMemcpy(ptr_, host.data(), count_ * sizeof(I), cudaMemcpyHostToDevice);
  }
  ~Device() { cudaFree(ptr_); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  void* get() const { return ptr_; }
  template <typename I>
  I* as() const {
    return static_cast<I*>(ptr_);
  }
  std::vector<float> Floats() const {
    std::vector<float> host(count_);
    if (type_ == ElementType::kFloat32) {
      cudaMemcpy(host.data(), ptr_, count_ * 4, cudaMemcpyDeviceToHost);
    } else {
      std::vector<uint16_t> half(count_);
      cudaMemcpy(half.data(), ptr_, count_ * 2, cudaMemcpyDeviceToHost);
      for (size_t i = 0; i < count_; ++i) {
        host[i] = type_ == ElementType::kFloat16 ? FromHalfBits(half[i]) : FromBf16Bits(half[i]);
      }
    }
    return host;
  }

 private:
  size_t bytes_per() const { return type_ == ElementType::kFloat32 ? 4 : 2; }
  ElementType type_;
  size_t count_;
  void* ptr_ = nullptr;
};

// The rotary + KV write's arguments for one token, from device copies of its inputs.
GemvRotaryKvArgs RotaryKvInto(const Device& positions, const Device& inv_freq, const Device& slot,
                              const Device& k_cache, const Device& v_cache, const RotaryKvShape& shape) {
  GemvRotaryKvArgs r;
  r.positions = positions.as<int64_t>();
  r.inv_freq = inv_freq.as<float>();
  r.slot = slot.as<int64_t>();
  r.k_cache = k_cache.get();
  r.v_cache = v_cache.get();
  r.shape = shape;
  return r;
}

std::vector<float> Random(size_t n, uint32_t seed, ElementType type, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> v(n);
  for (float& x : v) x = scale * normal(rng);
  // The reference sees exactly what the kernel sees.
  if (type == ElementType::kBFloat16) {
    for (float& x : v) x = RoundToBf16(x);
  } else if (type == ElementType::kFloat16) {
    for (float& x : v) x = RoundToHalf(x);
  }
  return v;
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], abs + rel * std::abs(want[i])) << "element " << i;
  }
}

class DecodeOpsCuda : public ::testing::TestWithParam<ElementType> {
 protected:
  void SetUp() override {
    if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  }
  ElementType type() const { return GetParam(); }
  bool bf16() const { return GetParam() == ElementType::kBFloat16; }
};

// The kernel against the reference for six tokens at positions up to 5000 in scattered slots.
// `mrope`: positions [3, tokens] with the frequencies split among the three components as
// glm4v's mrope_section [8, 12, 12] splits them.
void ExpectRotaryKvWriteMatchesReference(RotaryKvShape s, ElementType type, bool mrope = false) {
  const bool bf16 = type == ElementType::kBFloat16;
  std::vector<float> qkv = Random(s.tokens * s.qkv_row_stride, 3, type);
  std::vector<int64_t> positions = {0, 1, 127, 128, 4095, 5000};
  std::vector<int64_t> components;
  if (mrope) {
    positions.insert(positions.end(), {0, 3, 40, 41, 4000, 4999});
    positions.insert(positions.end(), {0, 7, 2, 90, 4001, 4998});
    for (int j = 0; j < s.rotary_dim / 2; ++j) components.push_back(j < 8 ? 0 : j < 20 ? 1 : 2);
  }
  Device d_components(mrope ? components : std::vector<int64_t>{0});
  std::vector<int64_t> slots = {9, 0, 3, 17, 5, 12};
  ASSERT_EQ(s.tokens * (mrope ? 3 : 1), static_cast<int32_t>(positions.size()));
  std::vector<float> inv_freq(s.rotary_dim / 2);
  for (int j = 0; j < s.rotary_dim / 2; ++j) inv_freq[j] = 1.0f / std::pow(10000.0f, 2.0f * j / s.rotary_dim);
  const int64_t kv_size = int64_t{s.num_kv_heads} * s.head_dim;
  std::vector<float> k_cache(20 * kv_size, 0.0f), v_cache(20 * kv_size, 0.0f);
  Device d_qkv(qkv, type), d_k(k_cache, type), d_v(v_cache, type);
  Device d_pos(positions), d_slots(slots), d_freq(inv_freq);
  if (mrope) s.frequency_component = d_components.as<int64_t>();
  ASSERT_TRUE(RotaryKvWriteCuda(d_qkv.get(), d_pos.as<int64_t>(), d_freq.as<float>(), d_slots.as<int64_t>(), d_k.get(),
                                d_v.get(), s, type, nullptr));
  if (mrope) s.frequency_component = components.data();
  RotaryKvWriteReference(qkv.data(), positions.data(), inv_freq.data(), slots.data(), k_cache.data(), v_cache.data(),
                         s);
  // bf16: the kernel rounds cos/sin and each product to bf16 as ATen does; the reference does not.
  const double rel = bf16 ? 3e-2 : 2e-5, abs = bf16 ? 3e-2 : 2e-5;
  ExpectClose(d_qkv.Floats(), qkv, rel, abs);
  ExpectClose(d_k.Floats(), k_cache, rel, abs);
  ExpectClose(d_v.Floats(), v_cache, 0, 0);  // v is copied untouched
}

TEST_P(DecodeOpsCuda, RotaryKvWriteMatchesReference) {
  // GLM-4-9B's layout (32 q heads, 2 kv heads, head_dim 128, rotary on 64 dims), a padded qkv row.
  ExpectRotaryKvWriteMatchesReference(RotaryKvShape{6, 32, 2, 128, 64, (32 + 4) * 128 + 8}, type());
}

TEST_P(DecodeOpsCuda, RotaryKvWriteTakesWideAndOddHeads) {
  // More pairs per head than threads per block (rotated and copied ones), and an odd head_dim
  // whose last element has no partner.
  ExpectRotaryKvWriteMatchesReference(RotaryKvShape{6, 4, 2, 201, 160, (4 + 4) * 201}, type());
}

TEST_P(DecodeOpsCuda, RotaryKvWriteTakesThreeDimensionalPositions) {
  // GLM-4.1V's text layout: 32 q heads, 2 kv heads, head_dim 128, rotary on 64 dims (32 frequencies).
  ExpectRotaryKvWriteMatchesReference(RotaryKvShape{6, 32, 2, 128, 64, (32 + 4) * 128}, type(), /*mrope=*/true);
}

TEST_P(DecodeOpsCuda, RotateHalfMatchesReference) {
  // GLM-4.1V's vision blocks: 12 heads of 128, q and k rotated in one call out of a qkv row of
  // 3 x 12 x 128; angles of the size the 2-D rotary gives (row / column up to ~170).
  const int64_t rows = 37, heads = 24, head_dim = 128, stride = 3 * 12 * 128;
  std::vector<float> x = Random(rows * stride, 11, type());
  std::vector<float> cos(rows * head_dim), sin(rows * head_dim);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < head_dim; ++i) {
      const float angle = static_cast<float>(r * 4.7) / std::pow(10000.0f, static_cast<float>(i % 32) / 32.0f);
      cos[r * head_dim + i] = std::cos(angle);
      sin[r * head_dim + i] = std::sin(angle);
    }
  }
  std::vector<float> want(rows * heads * head_dim), zeros(want.size(), 0.0f);
  Device d_x(x, type()), d_cos(cos), d_sin(sin), d_out(zeros, type());
  ASSERT_TRUE(RotateHalfCuda(d_x.get(), stride, d_cos.as<float>(), d_sin.as<float>(), d_out.get(), rows, heads,
                             head_dim, type(), nullptr));
  RotateHalfReference(x.data(), stride, cos.data(), sin.data(), want.data(), rows, heads, head_dim);
  // Computed in fp32 on both sides and rounded once (bf16: half a unit in the last place, 2^-8).
  const double rel = type() == ElementType::kFloat32 ? 1e-6 : type() == ElementType::kBFloat16 ? 4e-3 : 1e-3;
  ExpectClose(d_out.Floats(), want, rel, 1e-6);
}

TEST_P(DecodeOpsCuda, RotaryWithoutRotaryDimsOnlyWritesTheCache) {
  RotaryKvShape s{2, 4, 4, 12, 0, 3 * 4 * 12};
  std::vector<float> qkv = Random(s.tokens * s.qkv_row_stride, 4, type());
  std::vector<int64_t> positions = {3, 4}, slots = {1, 0};
  std::vector<float> inv_freq = {1.0f}, k_cache(2 * 48, 0.0f), v_cache(2 * 48, 0.0f);
  Device d_qkv(qkv, type()), d_k(k_cache, type()), d_v(v_cache, type()), d_pos(positions), d_slots(slots),
      d_freq(inv_freq);
  ASSERT_TRUE(RotaryKvWriteCuda(d_qkv.get(), d_pos.as<int64_t>(), d_freq.as<float>(), d_slots.as<int64_t>(), d_k.get(),
                                d_v.get(), s, type(), nullptr));
  RotaryKvWriteReference(qkv.data(), positions.data(), inv_freq.data(), slots.data(), k_cache.data(), v_cache.data(),
                         s);
  ExpectClose(d_qkv.Floats(), qkv, 0, 0);
  ExpectClose(d_k.Floats(), k_cache, 0, 0);
  ExpectClose(d_v.Floats(), v_cache, 0, 0);
}

void ExpectSwiGluMatchesReference(int64_t rows, int64_t width, ElementType type) {
  const bool bf16 = type == ElementType::kBFloat16;
  std::vector<float> gate_up = Random(rows * 2 * width, 5, type, 3.0f), want(rows * width);
  SwiGluReference(gate_up.data(), want.data(), rows, width);
  Device d_in(gate_up, type), d_out(std::vector<float>(rows * width, 0.0f), type);
  ASSERT_TRUE(SwiGluCuda(d_in.get(), d_out.get(), rows, width, type, nullptr));
  ExpectClose(d_out.Floats(), want, bf16 ? 1.6e-2 : 1e-6, bf16 ? 1e-6 : 1e-7);
}

TEST_P(DecodeOpsCuda, SwiGluMatchesReference) {
  ExpectSwiGluMatchesReference(5, 13696, type());  // GLM-4-9B's intermediate size: 16-byte chunks
  ExpectSwiGluMatchesReference(3, 1001, type());   // rows not 16-byte aligned: element by element
}

TEST_P(DecodeOpsCuda, GemvMatchesReferenceForEveryRowCount) {
  // n not a multiple of any block's rows; k a multiple of 8 but not of a warp's 256-element stride.
  const int64_t n = 1001, k = 4096 + 24;
  std::vector<float> w = Random(n * k, 7, type(), 0.05f), bias = Random(n, 8, type());
  Device d_w(w, type()), d_bias(bias, type());
  for (int32_t rows = 1; rows <= kGemvMaxRows; ++rows) {
    for (bool with_bias : {false, true}) {
      std::vector<float> x = Random(rows * k, 100 + rows, type()), want(rows * n);
      GemvReference(x.data(), w.data(), with_bias ? bias.data() : nullptr, want.data(), rows, n, k);
      Device d_x(x, type()), d_y(std::vector<float>(rows * n, 0.0f), type());
      ASSERT_TRUE(GemvCudaTakes(rows, k, type(), d_x.get(), d_w.get()));
      ASSERT_TRUE(
          GemvCuda(d_x.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, d_y.get(), rows, n, k, type(), nullptr));
      SCOPED_TRACE(testing::Message() << "rows " << rows << " bias " << with_bias);
      // bf16: one rounding of the fp32 sum (2^-8 relative); fp32: summation order only.
      ExpectClose(d_y.Floats(), want, bf16() ? 8e-3 : 1e-5, bf16() ? 2e-3 : 1e-5);
    }
  }
  EXPECT_FALSE(GemvCudaTakes(kGemvMaxRows + 1, k, type(), d_w.get(), d_w.get()));
  EXPECT_FALSE(GemvCudaTakes(1, k + 1, type(), d_w.get(), d_w.get()));
}

// One row through gate_up and SwiGLU in one launch: the same bits as the GEMV then the SwiGLU
// kernel (the CPU chain as the reference too), with and without bias; pairs of rows it declines.
TEST_P(DecodeOpsCuda, GemvSwiGluIsTheGemvThenSwiGluInOneLaunch) {
  const int64_t width = 1001, n = 2 * width, k = 4096 + 24;  // a last block of few warps
  const std::vector<float> w = Random(n * k, 9, type(), 0.05f), bias = Random(n, 10, type()), x = Random(k, 11, type());
  Device d_w(w, type()), d_bias(bias, type()), d_x(x, type());
  for (bool with_bias : {false, true}) {
    const void* b = with_bias ? d_bias.get() : nullptr;
    Device d_gate_up(std::vector<float>(n, 0.0f), type()), d_two_launches(std::vector<float>(width, 0.0f), type());
    Device d_fused(std::vector<float>(width, 0.0f), type());
    ASSERT_TRUE(GemvCuda(d_x.get(), d_w.get(), b, d_gate_up.get(), 1, n, k, type(), nullptr));
    ASSERT_TRUE(SwiGluCuda(d_gate_up.get(), d_two_launches.get(), 1, width, type(), nullptr));
    ASSERT_TRUE(GemvSwiGluCuda(d_x.get(), d_w.get(), b, d_fused.get(), 1, n, k, type(), nullptr));
    SCOPED_TRACE(testing::Message() << "bias " << with_bias);
    EXPECT_EQ(d_fused.Floats(), d_two_launches.Floats());
    std::vector<float> gate_up(n), want(width);
    GemvReference(x.data(), w.data(), with_bias ? bias.data() : nullptr, gate_up.data(), 1, n, k);
    if (bf16()) {
      for (float& v : gate_up) v = RoundToBf16(v);
    }
    SwiGluReference(gate_up.data(), want.data(), 1, width);
    ExpectClose(d_fused.Floats(), want, bf16() ? 2e-2 : 1e-4, bf16() ? 4e-3 : 1e-5);
  }
  Device d_y(std::vector<float>(2 * width, 0.0f), type()), d_x2(Random(2 * k, 12, type()), type());
  EXPECT_FALSE(GemvSwiGluCuda(d_x2.get(), d_w.get(), nullptr, d_y.get(), 2, n, k, type(), nullptr));
  EXPECT_FALSE(GemvSwiGluCuda(d_x.get(), d_w.get(), nullptr, d_y.get(), 1, n - 1, k, type(), nullptr));
}

// One row's add+RMSNorm and the projection after it in one launch: the same bits as the norm
// kernel then the GEMV (then SwiGLU), for every form of the norm (no delta, a delta, a sandwich
// delta), with and without SwiGLU; residual + delta lands in residual_out, residual is untouched.
TEST_P(DecodeOpsCuda, GemvAddRmsNormIsTheNormThenTheGemvInOneLaunch) {
  const int64_t k = 2056;  // 257 bf16 chunks: the last thread of the block holds one more
  const int64_t width = 1001;
  const float eps = 1e-5f;
  const int element_type = bf16() ? 1 : 0;
  const std::vector<float> residual = Random(k, 20, type()), delta = Random(k, 21, type()),
                           delta_weight = Random(k, 22, type()), norm_weight = Random(k, 23, type()),
                           w = Random(2 * width * k, 24, type(), 0.05f), bias = Random(2 * width, 25, type());
  Device d_residual(residual, type()), d_delta(delta, type()), d_delta_weight(delta_weight, type()),
      d_norm_weight(norm_weight, type()), d_w(w, type()), d_bias(bias, type());
  for (int form = 0; form < 3; ++form) {  // no delta, a delta, a normalised delta
    for (bool swiglu : {false, true}) {
      SCOPED_TRACE(testing::Message() << "form " << form << " swiglu " << swiglu);
      const void* dp = form > 0 ? d_delta.get() : nullptr;
      const void* dwp = form > 1 ? d_delta_weight.get() : nullptr;
      const int64_t n = swiglu ? 2 * width : width, outputs = swiglu ? width : n;
      const void* b = swiglu ? nullptr : d_bias.get();
      // Two or three launches: the norm updates its own copy of the residual.
      Device d_res_two(residual, type()), d_normed(std::vector<float>(k, 0.0f), type());
      Device d_gate_up(std::vector<float>(n, 0.0f), type()), d_want(std::vector<float>(outputs, 0.0f), type());
      ASSERT_TRUE(FusedNormAddRmsNormCudaTyped(dp, dwp, d_res_two.get(), d_norm_weight.get(), d_normed.get(), 1, k, eps,
                                               element_type, nullptr));
      ASSERT_TRUE(
          GemvCuda(d_normed.get(), d_w.get(), b, swiglu ? d_gate_up.get() : d_want.get(), 1, n, k, type(), nullptr));
      if (swiglu) {
        ASSERT_TRUE(SwiGluCuda(d_gate_up.get(), d_want.get(), 1, width, type(), nullptr));
      }
      // One launch.
      Device d_res_out(std::vector<float>(k, 0.0f), type()), d_y(std::vector<float>(outputs, 0.0f), type());
      ASSERT_TRUE(GemvAddRmsNormCuda(dp, dwp, d_residual.get(), d_res_out.get(), d_norm_weight.get(), eps, d_w.get(), b,
                                     d_y.get(), n, k, swiglu, nullptr, type(), nullptr));
      EXPECT_EQ(d_y.Floats(), d_want.Floats());
      EXPECT_EQ(d_residual.Floats(), residual);
      if (form > 0) {
        EXPECT_EQ(d_res_out.Floats(), d_res_two.Floats());
      }
    }
  }
  Device d_y(std::vector<float>(width, 0.0f), type());
  // A delta with nowhere to put the updated residual; a hidden size past the block's registers.
  EXPECT_FALSE(GemvAddRmsNormCuda(d_delta.get(), nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps,
                                  d_w.get(), nullptr, d_y.get(), width, k, false, nullptr, type(), nullptr));
  EXPECT_FALSE(GemvAddRmsNormCuda(nullptr, nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps, d_w.get(),
                                  nullptr, d_y.get(), 1, 1025 * 8, false, nullptr, type(), nullptr));
}

// The same with the rotary + KV write after a qkv projection: the bits of the norm kernel, the
// GEMV and RotaryKvWriteCuda in turn, in qkv and in both caches (another slot left as it was),
// for half-rotary heads with bias (GLM-4), whole-rotary heads, and 3-D positions (GLM-4.1V).
TEST_P(DecodeOpsCuda, GemvAddRmsNormWithRotaryIsTheThreeKernelsInOneLaunch) {
  const int64_t k = 264;
  const float eps = 1e-5f;
  const int element_type = bf16() ? 1 : 0;
  RotaryKvShape shape;
  shape.tokens = 1;
  shape.num_heads = 4;
  shape.num_kv_heads = 2;
  shape.head_dim = 12;
  const int64_t n = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim,
                kv = shape.num_kv_heads * shape.head_dim;
  shape.qkv_row_stride = n;
  const int64_t slots = 4, slot = 2;
  const std::vector<float> residual = Random(k, 30, type()), delta = Random(k, 31, type()),
                           norm_weight = Random(k, 32, type()), w = Random(n * k, 33, type(), 0.05f),
                           bias = Random(n, 34, type()), cache0 = Random(slots * kv, 35, type());
  Device d_residual(residual, type()), d_delta(delta, type()), d_norm_weight(norm_weight, type()), d_w(w, type()),
      d_bias(bias, type());
  Device d_positions(std::vector<int64_t>{37, 5, 11}), d_slot(std::vector<int64_t>{slot});
  for (int form = 0; form < 3; ++form) {  // half rotary with bias, whole rotary, 3-D positions
    SCOPED_TRACE(testing::Message() << "form " << form);
    shape.rotary_dim = form == 1 ? shape.head_dim : shape.head_dim / 2;
    std::vector<float> inv_freq(shape.rotary_dim / 2);
    for (size_t j = 0; j < inv_freq.size(); ++j) inv_freq[j] = std::pow(10000.0f, -2.0f * j / shape.rotary_dim);
    Device d_inv_freq(inv_freq, ElementType::kFloat32);
    Device d_components(std::vector<int64_t>{0, 1, 2});
    shape.frequency_component = form == 2 ? d_components.as<int64_t>() : nullptr;
    const void* b = form == 0 ? d_bias.get() : nullptr;
    // Three launches.
    Device d_res_three(residual, type()), d_normed(std::vector<float>(k, 0.0f), type());
    Device d_want(std::vector<float>(n, 0.0f), type()), d_k_want(cache0, type()), d_v_want(cache0, type());
    ASSERT_TRUE(FusedNormAddRmsNormCudaTyped(d_delta.get(), nullptr, d_res_three.get(), d_norm_weight.get(),
                                             d_normed.get(), 1, k, eps, element_type, nullptr));
    ASSERT_TRUE(GemvCuda(d_normed.get(), d_w.get(), b, d_want.get(), 1, n, k, type(), nullptr));
    ASSERT_TRUE(RotaryKvWriteCuda(d_want.get(), d_positions.as<int64_t>(), d_inv_freq.as<float>(), d_slot.as<int64_t>(),
                                  d_k_want.get(), d_v_want.get(), shape, type(), nullptr));
    // One launch.
    Device d_res_out(std::vector<float>(k, 0.0f), type()), d_y(std::vector<float>(n, 0.0f), type());
    Device d_k(cache0, type()), d_v(cache0, type());
    const GemvRotaryKvArgs rotary = RotaryKvInto(d_positions, d_inv_freq, d_slot, d_k, d_v, shape);
    ASSERT_TRUE(GemvAddRmsNormCuda(d_delta.get(), nullptr, d_residual.get(), d_res_out.get(), d_norm_weight.get(), eps,
                                   d_w.get(), b, d_y.get(), n, k, false, &rotary, type(), nullptr));
    EXPECT_EQ(d_y.Floats(), d_want.Floats());
    EXPECT_EQ(d_k.Floats(), d_k_want.Floats());
    EXPECT_EQ(d_v.Floats(), d_v_want.Floats());
    EXPECT_EQ(d_res_out.Floats(), d_res_three.Floats());
    EXPECT_NE(d_k.Floats(), cache0);  // the slot was written
  }
  // Pairs that would straddle heads (odd head_dim), a qkv width that is not the heads', SwiGLU too.
  GemvRotaryKvArgs bad;
  bad.positions = d_positions.as<int64_t>();
  bad.slot = d_slot.as<int64_t>();
  Device d_cache(cache0, type());
  bad.k_cache = bad.v_cache = d_cache.get();
  bad.shape = shape;
  bad.shape.rotary_dim = 0;
  bad.shape.head_dim = 11;
  Device d_y(std::vector<float>(n, 0.0f), type());
  EXPECT_FALSE(GemvAddRmsNormCuda(nullptr, nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps, d_w.get(),
                                  nullptr, d_y.get(), n, k, false, &bad, type(), nullptr));
  bad.shape.head_dim = 12;
  EXPECT_FALSE(GemvAddRmsNormCuda(nullptr, nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps, d_w.get(),
                                  nullptr, d_y.get(), n - 2, k, false, &bad, type(), nullptr));
  EXPECT_FALSE(GemvAddRmsNormCuda(nullptr, nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps, d_w.get(),
                                  nullptr, d_y.get(), n, k, true, &bad, type(), nullptr));
  EXPECT_TRUE(GemvAddRmsNormCuda(nullptr, nullptr, d_residual.get(), nullptr, d_norm_weight.get(), eps, d_w.get(),
                                 nullptr, d_y.get(), n, k, false, &bad, type(), nullptr));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

TEST_P(DecodeOpsCuda, SkinnyGemmMatchesReferenceAndDoesNotDependOnTheRowCount) {
  if (!bf16()) {
    EXPECT_FALSE(SkinnyGemmCudaTakes(16, 128, 64, type(), nullptr, nullptr)) << "fp32 stays on cuBLAS";
    return;
  }
  const size_t workspace_bytes = SkinnyGemmWorkspaceBytes();
  ASSERT_GT(workspace_bytes, 0u);
  // Any contents: each call zeroes the counters it uses.
  Device d_workspace(std::vector<uint8_t>(workspace_bytes, 0xab));
  struct Shape {
    int64_t n, k;
  };
  // A partial last tile and k not a multiple of the 128-wide stage; GLM-4-9B's qkv projection,
  // whose 36 tiles are each cut between several blocks (the TMA form: 72 whole 64-feature tiles);
  // a single unit, so most blocks idle; more 64-feature tiles than an H100 / H200 has SMs (the
  // TMA form cuts 128-feature tiles between blocks). Each on warpgroup MMA (wgmma) fed by
  // cp.async and by TMA, and on per-warp mma.sync.
  for (SkinnyGemmMath math : {SkinnyGemmMath::kTma, SkinnyGemmMath::kWarpgroup, SkinnyGemmMath::kWarp})
    for (const Shape& shape : {Shape{1000, 4096 + 24}, Shape{4608, 4096}, Shape{128, 64}, Shape{9000, 1024 + 24}}) {
      const int64_t n = shape.n, k = shape.k;
      std::vector<float> w = Random(n * k, 21, type(), 0.05f), bias = Random(n, 22, type());
      Device d_w(w, type()), d_bias(bias, type());
      const std::vector<float> x = Random(kSkinnyGemmMaxRows * k, 23, type());
      Device d_x(x, type());
      std::vector<float> all_rows;  // the product for 64 rows: each smaller batch's rows must equal it
      for (int32_t rows : {kSkinnyGemmMaxRows, 1, 3, 8, 9, 16, 17, 33}) {
        for (bool with_bias : {true, false}) {
          if (!with_bias && rows != 9) continue;
          SCOPED_TRACE(testing::Message() << "n " << n << " k " << k << " rows " << rows << " bias " << with_bias << " "
                                          << SkinnyGemmMathName(math));
          Device d_y(std::vector<float>(rows * n, 0.0f), type());
          ASSERT_TRUE(SkinnyGemmCudaTakes(rows, n, k, type(), d_x.get(), d_w.get()));
          ASSERT_TRUE(SkinnyGemmCuda(d_x.get(), d_w.get(), with_bias ? d_bias.get() : nullptr, d_y.get(), rows, n, k,
                                     type(), d_workspace.get(), nullptr, math));
          const std::vector<float> got = d_y.Floats();
          if (rows == kSkinnyGemmMaxRows) {
            std::vector<float> want(rows * n);
            GemvReference(x.data(), w.data(), bias.data(), want.data(), rows, n, k);
            ExpectClose(got, want, 8e-3, 2e-3);
            all_rows = got;
            // A second call over the workspace the first one left (the calls before it used it
            // too): the same bits.
            ASSERT_TRUE(SkinnyGemmCuda(d_x.get(), d_w.get(), d_bias.get(), d_y.get(), rows, n, k, type(),
                                       d_workspace.get(), nullptr, math));
            EXPECT_EQ(d_y.Floats(), got);
          } else if (with_bias) {
            EXPECT_EQ(got, std::vector<float>(all_rows.begin(), all_rows.begin() + rows * n));
          } else {
            std::vector<float> want(rows * n);
            GemvReference(x.data(), w.data(), nullptr, want.data(), rows, n, k);
            ExpectClose(got, want, 8e-3, 2e-3);
          }
        }
      }
    }
  EXPECT_FALSE(SkinnyGemmCudaTakes(kSkinnyGemmMaxRows + 1, 128, 64, type(), d_workspace.get(), d_workspace.get()));
  EXPECT_FALSE(SkinnyGemmCudaTakes(4, 128, 60, type(), d_workspace.get(), d_workspace.get()));
}

// cuBLASLt with timed algorithms: each tuned row count against the reference on every layer's
// weight it was timed on, in bf16 and fp16; untuned counts, misaligned pointers, fp32 and a
// capturing stream are refused.
TEST_P(DecodeOpsCuda, TunedGemmMatchesReferenceAtEveryTunedRowCount) {
  std::unique_ptr<TunedGemm> tuner = TunedGemm::Create();
  ASSERT_NE(tuner, nullptr);
  const int64_t n = 384, k = 512;
  const int32_t most_rows = 192;
  Device d_workspace(std::vector<uint8_t>(kTunedGemmWorkspaceBytes, 0));
  if (!bf16()) {
    Device scratch(std::vector<float>(most_rows * std::max(n, k), 0.0f), type());
    const GemmKey key{64, n, k, type(), false};
    EXPECT_FALSE(tuner->Tune(key, {scratch.get()}, {}, scratch.get(), scratch.get(), d_workspace.get(), 8, 0.0, nullptr,
                             nullptr))
        << "fp32 stays on ATen's cuBLAS call";
    EXPECT_FALSE(tuner->Tuned(key));
    return;
  }
  for (ElementType element : {ElementType::kBFloat16, ElementType::kFloat16}) {
    // Three layers' weights and biases of one shape, as a model's projection.
    std::vector<std::vector<float>> w, bias;
    std::vector<std::unique_ptr<Device>> d_w, d_bias;
    std::vector<const void*> weights, biases;
    for (uint32_t layer = 0; layer < 3; ++layer) {
      w.push_back(Random(n * k, 40 + layer, element, 0.05f));
      bias.push_back(Random(n, 50 + layer, element));
      d_w.push_back(std::make_unique<Device>(w.back(), element));
      d_bias.push_back(std::make_unique<Device>(bias.back(), element));
      weights.push_back(d_w.back()->get());
      biases.push_back(d_bias.back()->get());
    }
    const std::vector<float> x = Random(most_rows * k, 60, element);
    Device d_x(x, element), d_scratch_x(std::vector<float>(most_rows * k, 0.0f), element),
        d_scratch_y(std::vector<float>(most_rows * n, 0.0f), element);
    for (int32_t rows : {2, 64, 128, most_rows}) {
      for (bool with_bias : {true, false}) {
        SCOPED_TRACE(testing::Message() << (element == ElementType::kFloat16 ? "fp16" : "bf16") << " rows " << rows
                                        << " bias " << with_bias);
        const GemmKey key{rows, n, k, element, with_bias};
        GemmTuning tuning;
        ASSERT_TRUE(tuner->Tune(key, weights, with_bias ? biases : std::vector<const void*>{}, d_scratch_x.get(),
                                d_scratch_y.get(), d_workspace.get(), 8, 0.0, nullptr, &tuning));
        EXPECT_TRUE(tuner->Tuned(key));
        EXPECT_TRUE(tuning.used) << "margin 0: the fastest runs";
        EXPECT_GE(tuning.candidates, 1);
        EXPECT_GE(tuning.chosen, 0);
        EXPECT_GT(tuning.chosen_us, 0.0);
        EXPECT_LE(tuning.chosen_us, tuning.first_us) << "the fastest is at most the heuristic's first";
        for (size_t layer = 0; layer < weights.size(); ++layer) {
          Device d_y(std::vector<float>(rows * n, 0.0f), element);
          const void* b = with_bias ? biases[layer] : nullptr;
          ASSERT_TRUE(tuner->Takes(key, d_x.get(), weights[layer], b, d_y.get()));
          ASSERT_TRUE(tuner->Run(key, d_x.get(), weights[layer], b, d_y.get(), d_workspace.get(), nullptr));
          std::vector<float> want(rows * n);
          GemvReference(x.data(), w[layer].data(), with_bias ? bias[layer].data() : nullptr, want.data(), rows, n, k);
          ExpectClose(d_y.Floats(), want, 8e-3, 2e-3);
        }
      }
    }
    // A margin no candidate can beat: measured, but left to the caller's own call.
    const GemmKey kept{32, n, k, element, true};
    GemmTuning kept_tuning;
    ASSERT_TRUE(tuner->Tune(kept, weights, biases, d_scratch_x.get(), d_scratch_y.get(), d_workspace.get(), 8, 1.0,
                            nullptr, &kept_tuning));
    EXPECT_TRUE(tuner->Tuned(kept));
    EXPECT_FALSE(kept_tuning.used);
    EXPECT_FALSE(tuner->Takes(kept, d_x.get(), weights[0], biases[0], nullptr));
    EXPECT_FALSE(tuner->Run(kept, d_x.get(), weights[0], biases[0], d_scratch_y.get(), d_workspace.get(), nullptr));
    const GemmKey tuned{64, n, k, element, true};
    EXPECT_FALSE(tuner->Takes(GemmKey{3, n, k, element, true}, d_x.get(), weights[0], biases[0], nullptr))
        << "a row count never tuned";
    EXPECT_FALSE(tuner->Takes(tuned, d_x.as<uint16_t>() + 1, weights[0], biases[0], nullptr)) << "misaligned x";
    EXPECT_FALSE(tuner->Takes(tuned, d_x.get(), weights[0], nullptr, nullptr)) << "tuned with a bias";
  }
  // No timing (nor any launch) into a stream that is capturing a graph.
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  Device scratch(std::vector<float>(most_rows * k, 0.0f), type()), weight(std::vector<float>(n * k, 0.0f), type());
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  EXPECT_FALSE(tuner->Tune(GemmKey{8, n, k, type(), false}, {weight.get()}, {}, scratch.get(), scratch.get(),
                           d_workspace.get(), 8, 0.0, stream, nullptr));
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  if (graph != nullptr) cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  EXPECT_FALSE(tuner->Tuned(GemmKey{8, n, k, type(), false}));
}

struct AttentionCase {
  int32_t heads, kv_heads, head_dim;
};

TEST_P(DecodeOpsCuda, SplitPagedAttentionMatchesReference) {
  // 5 sequences: each split block gets at most one 32-position tile of a context; 64 (a decode
  // batch): fewer splits, so blocks walk several tiles through the pipelined loop; 160: more
  // (sequence, KV head) pairs than SMs, so the register-tile kernel runs 4-warp blocks, two an SM.
  for (int32_t batch : {5, 64, 160})
    for (const AttentionCase& c : {AttentionCase{32, 2, 128}, AttentionCase{8, 8, 64}, AttentionCase{16, 1, 128},
                                   AttentionCase{4, 2, 256}, AttentionCase{32, 1, 32}}) {
      SCOPED_TRACE(testing::Message() << batch << " sequences, " << c.heads << "/" << c.kv_heads << " heads, head_dim "
                                      << c.head_dim);
      // Query rows padded like the rotary kernel's in-place qkv rows.
      const int64_t q_stride = int64_t{c.heads + 2 * c.kv_heads} * c.head_dim;
      PagedAttentionShape s{batch,   c.heads, c.kv_heads, c.head_dim, 16, 40, 600, 1.0f / std::sqrt(float(c.head_dim)),
                            q_stride};
      const int64_t slots = 256 * s.block_size;
      std::vector<float> q = Random(s.batch * q_stride, 11, type());
      std::vector<float> k = Random(slots * s.num_kv_heads * s.head_dim, 12, type());
      std::vector<float> v = Random(k.size(), 13, type());
      std::vector<int32_t> lens = {1, 17, 300, 599, 64};
      for (int32_t i = 5; i < batch; ++i) lens.push_back(1 + (i * 37) % 599);
      std::vector<int32_t> blocks(256);
      std::iota(blocks.begin(), blocks.end(), 0);
      std::shuffle(blocks.begin(), blocks.end(), std::mt19937(14));
      std::vector<int32_t> tables(s.batch * s.max_blocks_per_seq);
      for (size_t i = 0; i < tables.size(); ++i) tables[i] = blocks[i % 256];
      std::vector<float> want(int64_t{s.batch} * s.num_heads * s.head_dim);
      PagedAttentionDecodeReference(q.data(), k.data(), v.data(), tables.data(), lens.data(), want.data(), s);
      const size_t workspace_bytes = PagedAttentionWorkspaceBytes(s);
      ASSERT_GT(workspace_bytes, 0u);
      Device d_q(q, type()), d_k(k, type()), d_v(v, type()), d_tables(tables), d_lens(lens);
      Device d_workspace(std::vector<uint8_t>(workspace_bytes, 0));
      const double tol = bf16() ? 1e-2 : 1e-4;
      // Split kernels on tensor cores (bf16, group <= 16: register tiles for head_dim <= 128, and
      // shared-memory tiles) and on CUDA cores; one-pass kernel.
      for (int kernel : {0, 1, 2}) {
        SCOPED_TRACE(kernel == 0   ? "split, tensor cores, register tiles allowed"
                     : kernel == 1 ? "split, tensor cores, shared-memory tiles"
                                   : "split, CUDA cores");
        PagedAttentionShape shape = s;
        shape.allow_warp_tiles = kernel == 0;
        shape.allow_tensor_cores = kernel < 2;
        Device d_out(std::vector<float>(want.size(), 0.0f), type());
        ASSERT_TRUE(PagedAttentionDecodeCuda(d_q.get(), d_k.get(), d_v.get(), d_tables.as<int32_t>(),
                                             d_lens.as<int32_t>(), d_out.get(), shape, type(), nullptr,
                                             d_workspace.get()));
        const std::vector<float> got = d_out.Floats();
        ExpectClose(got, want, tol, tol);
        // Again over the same workspace: the register-tile kernel's merge counters must have been
        // left at zero (a stale count would merge early or never), and the sums come out the same.
        Device d_again(std::vector<float>(want.size(), 0.0f), type());
        ASSERT_TRUE(PagedAttentionDecodeCuda(d_q.get(), d_k.get(), d_v.get(), d_tables.as<int32_t>(),
                                             d_lens.as<int32_t>(), d_again.get(), shape, type(), nullptr,
                                             d_workspace.get()));
        EXPECT_EQ(d_again.Floats(), got);
      }
      Device d_onepass(std::vector<float>(want.size(), 0.0f), type());
      ASSERT_TRUE(PagedAttentionDecodeCuda(d_q.get(), d_k.get(), d_v.get(), d_tables.as<int32_t>(),
                                           d_lens.as<int32_t>(), d_onepass.get(), s, type(), nullptr, nullptr));
      ExpectClose(d_onepass.Floats(), want, tol, tol);
    }
}

// A mixed step's graph runs the decode kernel over every row and lets flash attention fill the
// prefill rows: rows whose context is 0 must come out exactly as they went in, on every kernel
// (register tiles merged in the kernel, the split kernels with their merge kernel, one pass), and
// the rows around them must still match the reference.
TEST_P(DecodeOpsCuda, RowsOfContextZeroAreLeftAsTheyWere) {
  const int32_t heads = 32, kv_heads = 2, head_dim = 128, batch = 8;
  PagedAttentionShape s{batch, heads, kv_heads, head_dim, 16, 40, 600, 1.0f / std::sqrt(float(head_dim))};
  const int64_t slots = 256 * s.block_size;
  const std::vector<float> q = Random(int64_t{batch} * heads * head_dim, 51, type());
  const std::vector<float> k = Random(slots * kv_heads * head_dim, 52, type());
  const std::vector<float> v = Random(k.size(), 53, type());
  const std::vector<int32_t> lens = {0, 17, 0, 599, 300, 0, 1, 0};
  std::vector<int32_t> tables(s.batch * s.max_blocks_per_seq);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>((i * 11) % 256);
  const float sentinel = 3.0f;  // exact in bf16
  std::vector<float> want(int64_t{batch} * heads * head_dim, sentinel);
  PagedAttentionDecodeReference(q.data(), k.data(), v.data(), tables.data(), lens.data(), want.data(), s);
  Device d_q(q, type()), d_k(k, type()), d_v(v, type()), d_tables(tables), d_lens(lens);
  Device d_workspace(std::vector<uint8_t>(PagedAttentionWorkspaceBytes(s), 0));
  const double tol = bf16() ? 1e-2 : 1e-4;
  for (int kernel : {0, 1, 2, 3}) {
    SCOPED_TRACE(kernel == 0   ? "split, register tiles"
                 : kernel == 1 ? "split, shared-memory tiles"
                 : kernel == 2 ? "split, CUDA cores"
                               : "one pass");
    PagedAttentionShape shape = s;
    shape.allow_warp_tiles = kernel == 0;
    shape.allow_tensor_cores = kernel < 2;
    Device d_out(std::vector<float>(want.size(), sentinel), type());
    ASSERT_TRUE(PagedAttentionDecodeCuda(d_q.get(), d_k.get(), d_v.get(), d_tables.as<int32_t>(), d_lens.as<int32_t>(),
                                         d_out.get(), shape, type(), nullptr,
                                         kernel == 3 ? nullptr : d_workspace.get()));
    const std::vector<float> got = d_out.Floats();
    for (int32_t b = 0; b < batch; ++b) {
      if (lens[b] != 0) continue;
      for (int64_t i = int64_t{b} * heads * head_dim; i < int64_t{b + 1} * heads * head_dim; ++i) {
        ASSERT_EQ(got[i], sentinel) << "row " << b << " element " << i;
      }
    }
    ExpectClose(got, want, tol, tol);
  }
}

TEST_P(DecodeOpsCuda, SplitKernelDeclinesHeadDimsItCannotTile) {
  PagedAttentionShape s{2, 4, 4, 12, 16, 4, 64, 0.5f};
  EXPECT_EQ(PagedAttentionWorkspaceBytes(s), 0u);  // the one-pass kernel takes head_dim 12
}

// fp16 (the --dtype float16 option) through the kernels written for it beside bf16: the skinny
// GEMM on both instruction paths and the register-tile attention (merged in the kernel and not).
TEST(DecodeOpsCudaHalf, SkinnyGemmAndRegisterTileAttentionMatchTheReference) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  const ElementType half = ElementType::kFloat16;
  {
    const int64_t n = 1000, k = 4096 + 24;
    const std::vector<float> w = Random(n * k, 31, half, 0.05f), x = Random(kSkinnyGemmMaxRows * k, 32, half);
    Device d_w(w, half), d_x(x, half), d_workspace(std::vector<uint8_t>(SkinnyGemmWorkspaceBytes(), 0));
    for (SkinnyGemmMath math : {SkinnyGemmMath::kTma, SkinnyGemmMath::kWarpgroup, SkinnyGemmMath::kWarp}) {
      for (int32_t rows : {kSkinnyGemmMaxRows, 5}) {
        SCOPED_TRACE(testing::Message() << rows << " rows " << SkinnyGemmMathName(math));
        Device d_y(std::vector<float>(rows * n, 0.0f), half);
        ASSERT_TRUE(SkinnyGemmCudaTakes(rows, n, k, half, d_x.get(), d_w.get()));
        ASSERT_TRUE(SkinnyGemmCuda(d_x.get(), d_w.get(), nullptr, d_y.get(), rows, n, k, half, d_workspace.get(),
                                   nullptr, math));
        std::vector<float> want(rows * n);
        GemvReference(x.data(), w.data(), nullptr, want.data(), rows, n, k);
        ExpectClose(d_y.Floats(), want, 2e-3, 1e-3);
      }
    }
  }
  for (int32_t batch : {5, 64}) {
    SCOPED_TRACE(testing::Message() << batch << " sequences");
    const int32_t heads = 32, kv_heads = 2, head_dim = 128;
    PagedAttentionShape s{batch, heads, kv_heads, head_dim, 16, 40, 600, 1.0f / std::sqrt(float(head_dim))};
    const int64_t slots = 256 * s.block_size;
    const std::vector<float> q = Random(int64_t{batch} * heads * head_dim, 41, half);
    const std::vector<float> k = Random(slots * kv_heads * head_dim, 42, half);
    const std::vector<float> v = Random(k.size(), 43, half);
    std::vector<int32_t> lens;
    for (int32_t i = 0; i < batch; ++i) lens.push_back(1 + (i * 131) % 599);  // one split and several
    std::vector<int32_t> tables(s.batch * s.max_blocks_per_seq);
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>((i * 7) % 256);
    std::vector<float> want(int64_t{batch} * heads * head_dim);
    PagedAttentionDecodeReference(q.data(), k.data(), v.data(), tables.data(), lens.data(), want.data(), s);
    Device d_q(q, half), d_k(k, half), d_v(v, half), d_tables(tables), d_lens(lens);
    Device d_workspace(std::vector<uint8_t>(PagedAttentionWorkspaceBytes(s), 0));
    Device d_out(std::vector<float>(want.size(), 0.0f), half);
    ASSERT_TRUE(PagedAttentionDecodeCuda(d_q.get(), d_k.get(), d_v.get(), d_tables.as<int32_t>(), d_lens.as<int32_t>(),
                                         d_out.get(), s, half, nullptr, d_workspace.get()));
    ExpectClose(d_out.Floats(), want, 5e-3, 5e-3);
  }
}

// Dependent launch (kernels/launch.h): each kernel of a chain reads what the one before it wrote,
// so one that read its input before waiting for its predecessor would see the previous layer's
// values. Layers of GEMV -> add+RMSNorm, 64 MiB of weight each (long enough for the next kernel
// to start early), on a stream of its own, eager and captured in a graph, against the CPU chain;
// and with an L2 prefetch of the next layer's weight between the two (the norm's predecessor is
// then the prefetch, which must not end before the GEMV it follows).
TEST(DependentLaunch, ChainedKernelsReadTheirPredecessorsResults) {
  if (!CudaKernelsAvailable()) GTEST_SKIP() << "no CUDA device";
  const ElementType type = ElementType::kFloat32;
  constexpr int kLayers = 6;
  const int64_t hidden = 4096;
  std::vector<std::vector<float>> weights;
  for (int l = 0; l < kLayers; ++l) weights.push_back(Random(hidden * hidden, 40 + l, type, 0.02f));
  const std::vector<float> norm_weight = Random(hidden, 60, type), x0 = Random(hidden, 61, type);
  std::vector<float> x = x0, residual(hidden, 0.0f), y(hidden);
  for (int l = 0; l < kLayers; ++l) {
    GemvReference(x.data(), weights[l].data(), nullptr, y.data(), 1, hidden, hidden);
    FusedAddRmsNormReference(y.data(), residual.data(), norm_weight.data(), x.data(), 1, hidden, 1e-5f);
  }
  std::vector<std::unique_ptr<Device>> d_weights;
  for (const auto& w : weights) d_weights.push_back(std::make_unique<Device>(w, type));
  Device d_norm(norm_weight, type);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  // Runs the chain from x0 and returns the final x.
  auto run = [&](bool capture, bool prefetch) {
    Device d_x(x0, type), d_residual(std::vector<float>(hidden, 0.0f), type), d_y(std::vector<float>(hidden), type);
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (capture) {
      EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    }
    for (int l = 0; l < kLayers; ++l) {
      EXPECT_TRUE(GemvCuda(d_x.get(), d_weights[l]->get(), nullptr, d_y.get(), 1, hidden, hidden, type, stream));
      if (prefetch) {
        // Early on even layers: the norm after it must still see the GEMV's whole output.
        EXPECT_TRUE(L2PrefetchCuda(d_weights[(l + 1) % kLayers]->get(), hidden * hidden * 4, l % 2 == 0, stream));
      }
      EXPECT_TRUE(FusedAddRmsNormCuda(d_y.as<float>(), d_residual.as<float>(), d_norm.as<float>(), d_x.as<float>(), 1,
                                      hidden, 1e-5f, stream));
    }
    if (capture) {
      EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
      EXPECT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
      EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    }
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    if (exec != nullptr) cudaGraphExecDestroy(exec);
    if (graph != nullptr) cudaGraphDestroy(graph);
    return d_x.Floats();
  };
  const bool was_enabled = DependentLaunchEnabled();
  SetDependentLaunch(true);
  const std::vector<float> eager = run(false, false), graphed = run(true, false);
  const std::vector<float> eager_prefetch = run(false, true), graphed_prefetch = run(true, true);
  SetDependentLaunch(false);
  const std::vector<float> serial = run(false, false);
  SetDependentLaunch(was_enabled);
  cudaStreamDestroy(stream);
  ExpectClose(eager, x, 1e-4, 1e-4);
  ExpectClose(graphed, x, 1e-4, 1e-4);
  // The same kernels in the same order: the early start changes no bit.
  EXPECT_EQ(eager, serial);
  EXPECT_EQ(graphed, serial);
  EXPECT_EQ(eager_prefetch, serial);
  EXPECT_EQ(graphed_prefetch, serial);
}

INSTANTIATE_TEST_SUITE_P(Types, DecodeOpsCuda, ::testing::Values(ElementType::kFloat32, ElementType::kBFloat16),
                         [](const testing::TestParamInfo<ElementType>& info) {
                           return info.param == ElementType::kFloat32 ? "Float32" : "BFloat16";
                         });
#endif  // GLMSERVE_HAVE_CUDA_KERNELS

}  // namespace
}  // namespace glmserve::kernels
