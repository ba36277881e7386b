// The fused-kernel plumbing of the GPU path (GlmModel::LayerKernels: add+RMSNorm, rotary + KV
// write with q read back from qkv, SwiGLU, linear) checked on the CPU: the kernels' fp32 CPU
// references plugged into the eager forward must give the logits, and write the KV cache, that
// the plain ATen ops do. The GPU kernels are held to the same references by kernels_test on a
// GPU, so together the CUDA decode path's structure is covered in CI.
#include <ATen/ATen.h>

#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/decode_ops.h"
#include "kernels/rms_norm.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/model/glm_model.h"
#include "runtime/model/model_forward.h"
#include "tests/testutil/fixture_models.h"

namespace glmserve {
namespace {

float* F(const at::Tensor& t) { return t.data_ptr<float>(); }

GlmModel::LayerKernels ReferenceKernels(const GlmModel& model) {
  const ModelConfig& c = model.config();
  GlmModel::LayerKernels k;
  const float eps = static_cast<float>(c.rms_norm_eps);
  k.add_rms_norm = [eps](const at::Tensor& delta, const at::Tensor& delta_weight, at::Tensor& residual,
                         const at::Tensor& weight) {
    at::Tensor x = delta.defined() ? delta.contiguous() : at::zeros_like(residual);
    at::Tensor out = at::empty_like(residual);
    kernels::FusedNormAddRmsNormReference(F(x), delta_weight.defined() ? F(delta_weight) : nullptr, F(residual),
                                          F(weight), F(out), residual.size(0), residual.size(1), eps);
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
    kernels::RotaryKvWriteReference(F(qkv), positions.data_ptr<int64_t>(), inv_freq.defined() ? F(inv_freq) : nullptr,
                                    slots.data_ptr<int64_t>(), F(k_cache), F(v_cache), shape);
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

// Each fixture model's config with random fp32 weights on the CPU.
class LayerKernelsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(testing::FixtureModelDir(GetParam()).string());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    absl::StatusOr<std::unique_ptr<GlmModel>> model =
        GlmModel::BuildRandom(config_, at::kFloat, at::Device(at::kCPU), /*seed=*/5);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = *std::move(model);
  }

  ModelConfig config_;
  std::unique_ptr<GlmModel> model_;
};

// Two sequences prefilled together (different lengths, scattered blocks), then two decode steps
// that read the KV the first steps wrote: logits and caches must match the ATen forward.
TEST_P(LayerKernelsTest, CpuReferenceKernelsReproduceTheAtenForward) {
  const GlmModel& m = *model_;
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

// The one-row fusions' plumbing (norm_linear: add+RMSNorm and the projection after it, the
// SwiGLU or the rotary + KV write too where it says so; gate_up_swiglu; prefetch_weight): with
// the CPU references behind them, taking one-row steps only as the GPU's do, a prefill and two
// decode steps give the ATen forward's logits and caches; the residual handed to norm_linear is
// never written; and the prefetches name, in order, the weight each next projection reads.
TEST_P(LayerKernelsTest, FusedOneRowHooksReproduceTheAtenForward) {
  const GlmModel& m = *model_;
  const ModelConfig& c = config_;
  for (int fusions = 0; fusions < 4; ++fusions) {
    const bool fuse_swiglu = fusions & 1, fuse_rotary = fusions & 2;
    SCOPED_TRACE(::testing::Message() << "SwiGLU fused " << fuse_swiglu << ", rotary fused " << fuse_rotary);
    GlmModel::LayerKernels k = ReferenceKernels(m);
    const float eps = static_cast<float>(c.rms_norm_eps);
    int taken = 0, swiglu_taken = 0, rotary_taken = 0;
    k.norm_linear = [&](const GlmModel::NormLinear& a, at::Tensor& residual) -> GlmModel::FusedProjection {
      if (residual.size(0) != 1) return {};
      const at::Tensor before = residual.clone();
      at::Tensor updated = residual.clone(), normed = at::empty_like(residual);
      at::Tensor d = a.delta.defined() ? a.delta.contiguous() : at::zeros_like(residual);
      kernels::FusedNormAddRmsNormReference(F(d), a.delta_weight.defined() ? F(a.delta_weight) : nullptr, F(updated),
                                            F(a.norm_weight), F(normed), 1, residual.size(1), eps);
      at::Tensor y = at::empty({1, a.weight.size(0)}, residual.options());
      kernels::GemvReference(F(normed), F(a.weight), a.bias.defined() ? F(a.bias) : nullptr, F(y), 1, a.weight.size(0),
                             a.weight.size(1));
      const bool with_swiglu = a.swiglu && fuse_swiglu;
      if (with_swiglu) {
        at::Tensor act = at::empty({1, a.weight.size(0) / 2}, residual.options());
        kernels::SwiGluReference(F(y), F(act), 1, a.weight.size(0) / 2);
        y = act;
        ++swiglu_taken;
      }
      const bool with_rotary = a.positions.defined() && fuse_rotary;
      if (with_rotary) {
        kernels::RotaryKvShape shape;
        shape.tokens = 1;
        shape.num_heads = c.num_attention_heads;
        shape.num_kv_heads = c.num_key_value_heads;
        shape.head_dim = c.head_dim;
        shape.rotary_dim = c.rotary_dim;
        shape.qkv_row_stride = y.size(1);
        EXPECT_EQ(a.positions.numel(), 1);
        EXPECT_EQ(a.slots.numel(), 1);
        at::Tensor k_cache = a.k_cache, v_cache = a.v_cache;
        kernels::RotaryKvWriteReference(F(y), a.positions.data_ptr<int64_t>(),
                                        m.inv_freq().defined() ? F(m.inv_freq()) : nullptr, a.slots.data_ptr<int64_t>(),
                                        F(k_cache), F(v_cache), shape);
        ++rotary_taken;
      }
      EXPECT_TRUE(at::equal(residual, before));
      if (a.delta.defined()) residual = updated;
      ++taken;
      return {y, with_swiglu, with_rotary};
    };
    k.gate_up_swiglu = [&](const at::Tensor& x, const at::Tensor& weight) {
      at::Tensor gate_up = k.linear(x, weight, at::Tensor());
      return k.swiglu(gate_up);
    };
    std::vector<std::pair<std::string, const void*>> prefetched;
    k.prefetch_weight = [&](const char* role, const at::Tensor& weight, int64_t) {
      prefetched.emplace_back(role, weight.data_ptr());
    };
    KvPool aten_kv = m.AllocateKv(8, 4), kernel_kv = m.AllocateKv(8, 4);
    GenerationParams params;
    std::vector<SequenceStep> batch(1);
    batch[0].tokens = {3, 1, 4, 1, 5};
    batch[0].block_table = {5, 0, 7};
    batch[0].params = &params;
    for (int step = 0; step < 3; ++step) {
      SCOPED_TRACE(::testing::Message() << "step " << step);
      prefetched.clear();
      const at::Tensor want = m.EagerForward(batch, aten_kv, {});
      const at::Tensor got = m.EagerForward(batch, kernel_kv, k);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-5)) << "max |diff| " << (got - want).abs().max().item<float>();
      EXPECT_TRUE(at::allclose(kernel_kv.k, aten_kv.k, 1e-4, 1e-5)) << "K caches differ";
      EXPECT_TRUE(at::allclose(kernel_kv.v, aten_kv.v, 1e-4, 1e-5)) << "V caches differ";
      const std::vector<GlmModel::Projection> roles = m.Projections();
      std::vector<std::pair<std::string, const void*>> expected;
      for (int64_t l = 0; l < c.num_layers; ++l) {
        expected.emplace_back("o", roles[1].weights[l].data_ptr());
        expected.emplace_back("gate_up", roles[2].weights[l].data_ptr());
        expected.emplace_back("down", roles[3].weights[l].data_ptr());
        expected.emplace_back(l + 1 < c.num_layers ? "qkv" : "lm_head", l + 1 < c.num_layers
                                                                            ? roles[0].weights[l + 1].data_ptr()
                                                                            : roles[4].weights[0].data_ptr());
      }
      EXPECT_EQ(prefetched, expected);
      batch[0].start_position += static_cast<int32_t>(batch[0].tokens.size());
      batch[0].tokens = {static_cast<int32_t>(want.argmax(-1)[0].item<int64_t>())};
    }
    // The prefill's layers declined (5 rows), its one sampled row's lm_head taken; each decode
    // step: qkv and gate_up per layer, the lm_head.
    EXPECT_EQ(taken, 1 + 2 * (2 * c.num_layers + 1));
    EXPECT_EQ(swiglu_taken, fuse_swiglu ? 2 * c.num_layers : 0);
    EXPECT_EQ(rotary_taken, fuse_rotary ? 2 * c.num_layers : 0);
  }
}

// What the GPU's GEMM tuning times on (GlmModel::Projections): each projection role with one weight
// a layer in layer order, shaped as the config says, biases exactly where the config has them; the
// weights are the forward's own (zeroing layer 0's o projection through it changes the logits).
TEST_P(LayerKernelsTest, ProjectionsAreTheForwardsWeightsByRole) {
  const ModelConfig& c = config_;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim, kv = int64_t{c.num_key_value_heads} * c.head_dim;
  const std::vector<GlmModel::Projection> roles = model_->Projections();
  ASSERT_EQ(roles.size(), 5u);
  const std::vector<std::string> names = {"qkv", "o", "gate_up", "down", "lm_head"};
  const std::vector<std::vector<int64_t>> shapes = {{q + 2 * kv, c.hidden_size},
                                                    {c.hidden_size, q},
                                                    {2 * int64_t{c.intermediate_size}, c.hidden_size},
                                                    {c.hidden_size, c.intermediate_size},
                                                    {c.vocab_size, c.hidden_size}};
  for (size_t r = 0; r < roles.size(); ++r) {
    SCOPED_TRACE(names[r]);
    EXPECT_EQ(roles[r].role, names[r]);
    const size_t layers = names[r] == "lm_head" ? 1 : static_cast<size_t>(c.num_layers);
    ASSERT_EQ(roles[r].weights.size(), layers);
    ASSERT_EQ(roles[r].biases.size(), layers);
    for (size_t l = 0; l < layers; ++l) {
      EXPECT_EQ(roles[r].weights[l].sizes().vec(), shapes[r]) << "layer " << l;
      EXPECT_EQ(roles[r].biases[l].defined(), names[r] == "qkv" && c.attention_bias) << "layer " << l;
      if (l > 0) {
        EXPECT_NE(roles[r].weights[l].data_ptr(), roles[r].weights[l - 1].data_ptr()) << "layer " << l;
      }
    }
  }
  KvPool kv_pool = model_->AllocateKv(4, 4);
  GenerationParams params;
  std::vector<SequenceStep> batch(1);
  batch[0].tokens = {3, 1, 4};
  batch[0].block_table = {1};
  batch[0].params = &params;
  const at::Tensor before = model_->EagerForward(batch, kv_pool, {});
  roles[1].weights[0].zero_();
  const at::Tensor after = model_->EagerForward(batch, kv_pool, {});
  EXPECT_FALSE(at::allclose(before, after)) << "the o projection given is not the one the forward uses";
}

// The GPU's prefill and mixed steps (cuda_decode.cc RunMixed: decode rows through the paged
// attention kernel, prefill chunks through flash attention over variable lengths with their
// earlier chunks read back from the cache) against per-sequence ATen attention, in bf16 on
// GLM-4-9B's layer shapes (two layers): a chunk whose queries start past position 0 must see
// every earlier key (causal aligned to the bottom right), decode rows beside it must be unchanged.
// Steps of up to 512 rows with at most 8 prompt chunks whose contexts fit 16,384 rows replay one
// graph for the whole step (the 1,024-row context graph captured at start, the 4,096-row one on
// first use; steps of up to 64 prompt rows with contexts up to 1,024 in a graph whose paged kernel
// takes the prompt rows too: steps 0, 1 and 7); with more chunks they replay the graphs between
// eager attentions; longer steps run eagerly. All are covered, decode rows with contexts of one
// block and of many.
TEST(MixedStepTest, CudaMixedStepsMatchPerSequenceAttention) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device";
  absl::StatusOr<ModelConfig> config =
      LoadModelConfig((std::filesystem::path(GLMSERVE_FIXTURES_DIR).parent_path().parent_path() / "bench" / "configs" /
                       "glm-4-9b-chat-hf")
                          .string());
  ASSERT_TRUE(config.ok()) << config.status();
  config->num_layers = 2;
  absl::StatusOr<std::unique_ptr<GlmModel>> model =
      GlmModel::BuildRandom(*config, at::kBFloat16, at::Device(at::kCUDA, 0), 11);
  ASSERT_TRUE(model.ok()) << model.status();
  const GlmModel& m = **model;
  const int32_t block_size = 16;
  KvPool fast_kv = m.AllocateKv(256, block_size), aten_kv = m.AllocateKv(256, block_size);
  GenerationParams params;
  auto prompt = [](int32_t n, int32_t salt) {
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < n; ++i) ids.push_back((i * 7919 + salt * 104729) % 150000 + 1);
    return ids;
  };
  // a: 70-token prompt in chunks of 40 and 30; b: 9-token prompt; c: joins in step 2 (5 tokens).
  const std::vector<int32_t> a = prompt(70, 1), b = prompt(9, 2), c = prompt(5, 3), d = prompt(1120, 4);
  auto step = [&](int64_t id, std::vector<int32_t> tokens, int32_t start, std::vector<int32_t> table, bool sample) {
    SequenceStep st;
    st.sequence_id = id;
    st.tokens = std::move(tokens);
    st.start_position = start;
    st.block_table = std::move(table);
    st.sample = sample;
    st.params = &params;
    return st;
  };
  const std::vector<int32_t> table_a = {9, 2, 30, 4, 17, 6}, table_b = {11, 40}, table_c = {1, 50};
  std::vector<int32_t> table_d;
  for (int32_t block = 60; block < 132; ++block) table_d.push_back(block);
  ModelForward forward(m);
  std::vector<std::vector<SequenceStep>> steps(8);
  steps[0] = {step(1, {a.begin(), a.begin() + 40}, 0, table_a, false), step(2, b, 0, table_b, true)};
  steps[1] = {step(2, {42}, 9, table_b, true), step(1, {a.begin() + 40, a.end()}, 40, table_a, true),
              step(3, c, 0, table_c, true)};
  steps[2] = {step(2, {43}, 10, table_b, true), step(1, {44}, 70, table_a, true), step(3, {45}, 5, table_c, true)};
  // Beyond the mixed-step graphs' largest bucket (512 rows): the eager forward.
  steps[3] = {step(2, {46}, 11, table_b, true), step(4, {d.begin(), d.begin() + 1100}, 0, table_d, false)};
  // A 101-row step (its prompt rows reach past row 64), then a step whose 64-row graph is captured
  // on first use: that capture's warm-up must not run over the 101-row step's leftovers.
  steps[4] = {step(2, {47}, 12, table_b, true), step(6, prompt(100, 6), 0, {200, 201, 202, 203, 204, 205, 206}, true)};
  // A chunk whose context (1,120 rows) needs the 4,096-row gather.
  steps[5] = {step(2, {48}, 13, table_b, true), step(4, {d.begin() + 1100, d.end()}, 1100, table_d, true)};
  // Nine prompt chunks: more than the whole-step graphs' slots.
  steps[6] = {step(2, {49}, 14, table_b, true), step(4, {50}, 1120, table_d, true)};
  for (int32_t i = 0; i < 9; ++i) steps[6].push_back(step(10 + i, prompt(3, 10 + i), 0, {140 + i}, true));
  // A decode row whose context spans 71 blocks beside a fresh prompt, in one graph.
  steps[7] = {step(2, {51}, 15, table_b, true), step(4, {52}, 1121, table_d, true), step(5, c, 0, {150}, true)};
  for (size_t i = 0; i < steps.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "step " << i);
    const at::Tensor got = forward.Forward(steps[i], fast_kv).to(at::kFloat).cpu();
    const at::Tensor want = m.EagerForward(steps[i], aten_kv, {}).to(at::kFloat).cpu();
    ASSERT_EQ(got.sizes(), want.sizes());
    for (int64_t r = 0; r < got.size(0); ++r) {
      const at::Tensor g = got[r], w = want[r];
      const double relative = ((g - w).norm() / w.norm()).item<double>();
      const double cosine = ((g * w).sum() / (g.norm() * w.norm())).item<double>();
      // bf16 rounding in different orders (cuBLAS vs ATen, fused vs per-sequence attention) stays
      // near 1%; a wrong causal alignment or a missing earlier chunk moves rows by tens of percent.
      EXPECT_LT(relative, 0.05) << "row " << r;
      EXPECT_GT(cosine, 0.998) << "row " << r;
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
