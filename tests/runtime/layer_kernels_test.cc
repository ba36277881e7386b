// The fused-kernel plumbing of the GPU path (GlmModel::LayerKernels: add+RMSNorm, rotary + KV
// write with q read back from qkv, SwiGLU, linear) checked on the CPU: the kernels' fp32 CPU
// references plugged into the eager forward must give the logits, and write the KV cache, that
// the plain ATen ops do. The GPU kernels are held to the same references by kernels_test on a
// GPU, so together the CUDA decode path's structure is covered in CI.
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/decode_ops.h"
#include "kernels/rms_norm.h"
#include "runtime/glm_model.h"
#include "runtime/model_config.h"
#include "tests/testutil/fixture_models.h"

namespace glmserve {
namespace {


float* F(const at::Tensor& t) { return t.data_ptr<float>(); }

GlmModel::LayerKernels ReferenceKernels(const GlmModel& model) {
  const ModelConfig& c = model.config();
  GlmModel::LayerKernels k;
  const float eps = static_cast<float>(c.rms_norm_eps);
  k.add_rms_norm = [eps](const at::Tensor& delta, at::Tensor& residual, const at::Tensor& weight) {
    at::Tensor x = delta.defined() ? delta.contiguous() : at::zeros_like(residual);
    at::Tensor out = at::empty_like(residual);
    kernels::FusedAddRmsNormReference(F(x), F(residual), F(weight), F(out), residual.size(0), residual.size(1), eps);
    return out;
  };
  kernels::RotaryKvShape shape;
  shape.num_heads = c.num_attention_heads;
  shape.num_kv_heads = c.num_key_value_heads;
  shape.head_dim = c.head_dim;
  shape.rotary_dim = c.rotary_dim;
  const at::Tensor inv_freq = model.inv_freq();
  k.rotary_kv = [shape, inv_freq](at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& slots,
                                  at::Tensor& k_cache, at::Tensor& v_cache) mutable {
    EXPECT_TRUE(qkv.is_contiguous());
    shape.tokens = static_cast<int32_t>(qkv.size(0));
    shape.qkv_row_stride = qkv.stride(0);
    kernels::RotaryKvWriteReference(F(qkv), positions.data_ptr<int64_t>(),
                                    inv_freq.defined() ? F(inv_freq) : nullptr, slots.data_ptr<int64_t>(),
                                    F(k_cache), F(v_cache), shape);
  };
  k.swiglu = [](const at::Tensor& gate_up) {
    at::Tensor in = gate_up.contiguous();
    at::Tensor out = at::empty({in.size(0), in.size(1) / 2}, in.options());
    kernels::SwiGluReference(F(in), F(out), in.size(0), in.size(1) / 2);
    return out;
  };
  k.linear = [](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    at::Tensor in = x.contiguous();
    at::Tensor out = at::empty({in.size(0), weight.size(0)}, in.options());
    kernels::GemvReference(F(in), F(weight), bias.defined() ? F(bias) : nullptr, F(out),
                           static_cast<int32_t>(in.size(0)), weight.size(0), in.size(1));
    return out;
  };
  return k;
}

class LayerKernelsTest : public ::testing::TestWithParam<std::string> {};

// Two sequences prefilled together (different lengths, scattered blocks), then two decode steps
// that read the KV the first steps wrote: logits and caches must match the ATen forward.
TEST_P(LayerKernelsTest, CpuReferenceKernelsReproduceTheAtenForward) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(testing::FixtureModelDir(GetParam()).string());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<GlmModel>> model = GlmModel::BuildRandom(*config, at::kFloat, at::Device(at::kCPU), 5);
  ASSERT_TRUE(model.ok()) << model.status();
  const GlmModel& m = **model;
  const GlmModel::LayerKernels reference = ReferenceKernels(m);
  KvPool aten_kv = m.AllocateKv(8, 4), kernel_kv = m.AllocateKv(8, 4);
  GenerationParams params;
  std::vector<SequenceStep> batch(2);
  batch[0].tokens = {3, 1, 4, 1, 5, 9, 2};
  batch[0].block_table = {5, 0, 7};
  batch[1].tokens = {2, 7};
  batch[1].block_table = {3, 6};
  for (SequenceStep& s : batch) s.params = &params;
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    const at::Tensor want = m.EagerForward(batch, aten_kv, {});
    const at::Tensor got = m.EagerForward(batch, kernel_kv, reference);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(at::allclose(got, want, /*rtol=*/1e-4, /*atol=*/1e-5))
        << "max |diff| " << (got - want).abs().max().item<float>();
    EXPECT_TRUE(at::allclose(kernel_kv.k, aten_kv.k, 1e-4, 1e-5)) << "K caches differ";
    EXPECT_TRUE(at::allclose(kernel_kv.v, aten_kv.v, 1e-4, 1e-5)) << "V caches differ";
    const at::Tensor next = want.argmax(-1);
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].start_position += static_cast<int32_t>(batch[i].tokens.size());
      batch[i].tokens = {static_cast<int32_t>(next[static_cast<int64_t>(i)].item<int64_t>())};
    }
  }
}

// Layouts with partial and full rotary, GQA / MQA / MHA, biases or none, head_dim != hidden/heads.
INSTANTIATE_TEST_SUITE_P(Fixtures, LayerKernelsTest,
                         ::testing::Values("glm4-gqa-safetensors", "glm4-tied-mqa-safetensors",
                                           "glm4-headdim12-fp16-bin-sharded", "glm-mha-safetensors-sharded",
                                           "glm-nobias-legacy-rope-bf16-bin", "chatglm3-fp16-bin-sharded"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace glmserve
