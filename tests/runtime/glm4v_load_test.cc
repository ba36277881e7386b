// GLM-4.1V (model_type "glm4v") loading: config.json with transformers 5.24's defaults, the key
// plan of the released layout, the vision tensors kept for the vision tower, random weights.
// Expected sizes are written out from transformers' Glm4v* classes and the fixture's config,
// not computed by the code under test.
#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/checkpoint/checkpoint.h"
#include "runtime/checkpoint/checkpoint_plan.h"
#include "runtime/checkpoint/checkpoint_tensors.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/weight_map.h"
#include "runtime/model/glm_model.h"
#include "runtime/model_runner.h"
#include "tests/testutil/scratch_dir_test.h"

namespace glmserve {
namespace {

namespace fs = std::filesystem;

fs::path Glm4vFixture() { return fs::path(GLMSERVE_FIXTURES_DIR) / "glm4v" / "tiny-safetensors-sharded"; }

class Glm4vConfigTest : public glmserve::testing::ScratchDirTest {
 protected:
  absl::StatusOr<ModelConfig> Load() { return LoadModelConfig(dir_.string()); }
};

TEST_F(Glm4vConfigTest, FixtureConfigReadsTextVisionAndTokenIds) {
  auto c = LoadModelConfig(Glm4vFixture().string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kGlm4v);
  EXPECT_STREQ(ArchitectureName(c->architecture), "glm4v");
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 96);
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 16);   // hidden / heads: Glm4vTextAttention ignores head_dim
  EXPECT_EQ(c->rotary_dim, 8);  // 16 x partial_rotary_factor 0.5
  EXPECT_EQ(c->mrope_section, (std::vector<int32_t>{2, 1, 1}));
  EXPECT_EQ(c->max_position_embeddings, 1024);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->sandwich_norms);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{246, 247}));
  EXPECT_EQ(c->pad_token_id, 0);
  ASSERT_TRUE(c->vision.has_value());
  const VisionConfig& v = *c->vision;
  EXPECT_EQ(v.depth, 2);
  EXPECT_EQ(v.hidden_size, 32);
  EXPECT_EQ(v.num_heads, 2);
  EXPECT_EQ(v.intermediate_size, 48);
  EXPECT_EQ(v.out_hidden_size, 64);
  EXPECT_EQ(v.patch_size, 14);
  EXPECT_EQ(v.spatial_merge_size, 2);
  EXPECT_EQ(v.temporal_patch_size, 2);
  EXPECT_EQ(v.image_size, 56);
  EXPECT_EQ(v.num_positions(), 16);
  EXPECT_EQ(v.in_channels, 3);
  EXPECT_EQ(v.hidden_act, "silu");
  EXPECT_EQ(v.image_token_id, 242);
  EXPECT_EQ(v.image_start_token_id, 240);
  EXPECT_EQ(v.image_end_token_id, 241);
  EXPECT_EQ(v.video_token_id, 245);
  EXPECT_EQ(v.video_start_token_id, 243);
  EXPECT_EQ(v.video_end_token_id, 244);
}

TEST_F(Glm4vConfigTest, AbsentFieldsTakeTransformersDefaults) {
  // Glm4vConfig(): GLM-4.1V-9B's sizes. partial_rotary_factor must be given (Glm4vText's
  // default 1.0 with mrope_section [8, 12, 12] does not run in transformers either).
  Write("config.json",
        R"({"model_type": "glm4v", "text_config": {"rope_parameters": {"partial_rotary_factor": 0.5}}})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 151552);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 13696);
  EXPECT_EQ(c->num_layers, 40);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rotary_dim, 64);
  EXPECT_EQ(c->mrope_section, (std::vector<int32_t>{8, 12, 12}));
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_TRUE(c->eos_token_ids.empty());  // Glm4vConfig names none
  EXPECT_EQ(c->pad_token_id, -1);
  ASSERT_TRUE(c->vision.has_value());
  EXPECT_EQ(c->vision->depth, 24);
  EXPECT_EQ(c->vision->hidden_size, 1536);
  EXPECT_EQ(c->vision->num_heads, 12);
  EXPECT_EQ(c->vision->intermediate_size, 13696);
  EXPECT_EQ(c->vision->out_hidden_size, 4096);
  EXPECT_EQ(c->vision->image_size, 336);
  EXPECT_EQ(c->vision->num_positions(), 576);
  EXPECT_EQ(c->vision->image_token_id, 151343);
  EXPECT_EQ(c->vision->image_start_token_id, 151339);
  EXPECT_EQ(c->vision->image_end_token_id, 151340);
}

TEST_F(Glm4vConfigTest, ReleasedConfigsTopLevelRopeSpellingIsAccepted) {
  // GLM-4.1V-9B-Thinking's config.json (transformers 4.5x): rope settings at the top of
  // text_config, mrope_section inside rope_scaling, eos in text_config, tie in text_config.
  Write("config.json", R"({"architectures": ["Glm4vForConditionalGeneration"], "model_type": "glm4v",
    "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
      "vocab_size": 300, "partial_rotary_factor": 0.5, "rope_theta": 500.0,
      "rope_scaling": {"type": "default", "mrope_section": [2, 1, 1]}, "eos_token_id": [7, 8],
      "tie_word_embeddings": true},
    "vision_config": {"out_hidden_size": 64, "hidden_size": 32, "num_heads": 2},
    "image_token_id": 200, "image_start_token_id": 201, "image_end_token_id": 202,
    "video_token_id": 203, "video_start_token_id": 204, "video_end_token_id": 205})");
  Write("generation_config.json", R"({"eos_token_id": [9, 7]})");
  auto c = Load();
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->rope_theta, 500.0);
  EXPECT_EQ(c->rotary_dim, 8);
  EXPECT_EQ(c->mrope_section, (std::vector<int32_t>{2, 1, 1}));
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{9, 7, 8}));
}

TEST_F(Glm4vConfigTest, EveryBadFieldIsReportedAtOnceNamingItsPlace) {
  Write("config.json", R"({"model_type": "glm4v",
    "text_config": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 100,
      "head_dim": 32, "rope_parameters": {"rope_type": "yarn", "partial_rotary_factor": 0.5,
      "mrope_section": [2, 2, 2]}},
    "vision_config": {"depth": 0, "hidden_size": 30, "num_heads": 4, "out_hidden_size": 48, "patch_size": "14",
      "hidden_act": "gelu", "rope_parameters": {"rope_type": "default"}},
    "image_token_id": 151343})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string message(c.status().message());
  for (const char* needle : {
           "config.json: text_config: field 'head_dim': expected hidden_size / num_attention_heads = 16",
           "config.json: text_config.rope_parameters: field 'rope_type': 'yarn' is not supported",
           "field 'rope_parameters.mrope_section': [2, 2, 2] sums to 6 but the rotary dimension 8",
           "config.json: field 'text_config.num_key_value_heads': 3 does not divide num_attention_heads 4",
           "config.json: vision_config: field 'depth': expected a positive integer, found 0",
           "config.json: vision_config: field 'patch_size': expected an integer, found string",
           "config.json: vision_config: field 'num_heads': hidden_size 30 / num_heads 4",
           "config.json: vision_config: field 'out_hidden_size': 48 differs from text_config.hidden_size 64",
           "config.json: vision_config: field 'hidden_act': 'gelu' is not supported",
           "config.json: vision_config.rope_parameters: field 'rope_type': 'default' is not supported",
           "config.json: field 'image_token_id': 151343 is outside the vocabulary (text_config.vocab_size 100)",
       }) {
    EXPECT_NE(message.find(needle), std::string::npos) << needle << "\n---\n" << message;
  }
}

// Vision sizes far past any GLM-4.1V are corrupt, named as the text sizes are (a hidden_size of
// 2^30 with 2^20 heads was taken, and reported only as tensor shapes of billions of features).
TEST_F(Glm4vConfigTest, ImplausibleVisionSizesAreNamed) {
  Write("config.json", R"({"model_type": "glm4v",
    "text_config": {"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100},
    "vision_config": {"depth": 2, "hidden_size": 1073741824, "num_heads": 1048576, "in_channels": 100000,
      "spatial_merge_size": 4096, "out_hidden_size": 64}})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  const std::string message(c.status().message());
  for (const char* needle : {"field 'hidden_size': 1073741824 is implausibly large (at most 131072)",
                             "field 'num_heads': 1048576 is implausibly large (at most 4096)",
                             "field 'in_channels': 100000 is implausibly large (at most 64)",
                             "field 'spatial_merge_size': 4096 is implausibly large (at most 64)"}) {
    EXPECT_NE(message.find(needle), std::string::npos) << needle << "\n---\n" << message;
  }
}

TEST_F(Glm4vConfigTest, DefaultRopeWithoutPartialFactorIsRefusedAsTransformersFails) {
  // transformers 5.24: "split_with_sizes expects split_sizes to sum exactly to 64".
  Write("config.json", R"({"model_type": "glm4v"})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("[8, 12, 12] sums to 32 but the rotary dimension 128"), std::string::npos)
      << c.status();
}

TEST_F(Glm4vConfigTest, MoeVariantIsNotTakenForGlm4v) {
  Write("config.json", R"({"model_type": "glm4v_moe", "architectures": ["Glm4vMoeForConditionalGeneration"]})");
  auto c = Load();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'glm4v_moe' is not a GLM model"), std::string::npos) << c.status();
}

// ---- the key plan ----

ModelConfig FixtureConfig() {
  auto c = LoadModelConfig(Glm4vFixture().string());
  EXPECT_TRUE(c.ok()) << c.status();
  return *c;
}

bool HasProblem(const WeightPlan& plan, const std::string& text) {
  return std::any_of(plan.problems.begin(), plan.problems.end(),
                     [&](const std::string& p) { return p.find(text) != std::string::npos; });
}

const MappedTensor* Find(const WeightPlan& plan, const std::string& canonical) {
  for (const MappedTensor& t : plan.tensors) {
    if (t.canonical == canonical) return &t;
  }
  return nullptr;
}

TEST(Glm4vWeightMap, FixturePlansEveryKeyWithVisionShapes) {
  auto listing = ListCheckpoint(Glm4vFixture().string());
  ASSERT_TRUE(listing.ok()) << listing.status();
  // Written out from modeling_glm4v.py: text 1 + 2 x 13 + 2 (norm, lm_head); vision 13 + 2 x 7.
  EXPECT_EQ(listing->tensors.size(), 56u);
  const WeightPlan plan = PlanWeights(FixtureConfig(), *listing);
  ASSERT_TRUE(plan.problems.empty()) << plan.problems[0];
  EXPECT_EQ(plan.mapping.size(), 56u);
  EXPECT_EQ(plan.tensors.size(), 58u);  // gate_up_proj split in two per layer (+2)
  EXPECT_EQ(plan.stored_dtype, "float32");
  struct Want {
    const char* canonical;
    const char* source;
    std::vector<int64_t> shape;
  };
  for (const Want& w : std::vector<Want>{
           {"visual.patch_embed.weight", "model.visual.patch_embed.proj.weight", {32, 3, 2, 14, 14}},
           {"visual.patch_embed.bias", "model.visual.patch_embed.proj.bias", {32}},
           {"visual.post_conv_norm.weight", "model.visual.post_conv_layernorm.weight", {32}},
           {"visual.position_embedding.weight", "model.visual.embeddings.position_embedding.weight", {16, 32}},
           {"visual.blocks.1.qkv.weight", "model.visual.blocks.1.attn.qkv.weight", {96, 32}},
           {"visual.blocks.1.proj.weight", "model.visual.blocks.1.attn.proj.weight", {32, 32}},
           {"visual.blocks.0.gate.weight", "model.visual.blocks.0.mlp.gate_proj.weight", {64, 32}},
           {"visual.blocks.0.down.weight", "model.visual.blocks.0.mlp.down_proj.weight", {32, 64}},
           {"visual.downsample.weight", "model.visual.downsample.weight", {64, 32, 2, 2}},
           {"visual.merger.proj.weight", "model.visual.merger.proj.weight", {64, 64}},
           {"visual.merger.norm.bias", "model.visual.merger.post_projection_norm.bias", {64}},
           {"visual.merger.gate.weight", "model.visual.merger.gate_proj.weight", {48, 64}},
           {"visual.merger.down.weight", "model.visual.merger.down_proj.weight", {64, 48}},
           {"layers.1.q.bias", "model.language_model.layers.1.self_attn.q_proj.bias", {64}},
           {"layers.1.up.weight", "model.language_model.layers.1.mlp.gate_up_proj.weight", {96, 64}},
           {"layers.0.post_mlp_norm.weight", "model.language_model.layers.0.post_mlp_layernorm.weight", {64}},
           {"embed.weight", "model.language_model.embed_tokens.weight", {256, 64}},
           {"lm_head.weight", "lm_head.weight", {256, 64}},
       }) {
    const MappedTensor* t = Find(plan, w.canonical);
    ASSERT_NE(t, nullptr) << w.canonical;
    EXPECT_EQ(t->source_key, w.source) << w.canonical;
    EXPECT_EQ(t->shape, w.shape) << w.canonical;
  }
  EXPECT_EQ(Find(plan, "layers.1.up.weight")->row_begin, 96);
  EXPECT_EQ(Find(plan, "visual.blocks.0.qkv.bias"), nullptr);  // vision attention_bias false
  // The mapping shows the vision keys.
  EXPECT_NE(std::find(plan.mapping.begin(), plan.mapping.end(),
                      "model.visual.merger.post_projection_norm.weight -> visual.merger.norm.weight"),
            plan.mapping.end());
}

TEST(Glm4vWeightMap, CanonicalTensorsEqualTheFixturesPlan) {
  const ModelConfig config = FixtureConfig();
  auto listing = ListCheckpoint(Glm4vFixture().string());
  ASSERT_TRUE(listing.ok());
  const WeightPlan plan = PlanWeights(config, *listing);
  const std::vector<MappedTensor> canonical = CanonicalTensors(config);
  ASSERT_EQ(canonical.size(), plan.tensors.size());
  for (size_t i = 0; i < canonical.size(); ++i) {
    EXPECT_EQ(canonical[i].canonical, plan.tensors[i].canonical);
    EXPECT_EQ(canonical[i].shape, plan.tensors[i].shape) << canonical[i].canonical;
  }
}

TEST(Glm4vWeightMap, EveryProblemIsListedAtOnce) {
  const ModelConfig config = FixtureConfig();
  auto listing = ListCheckpoint(Glm4vFixture().string());
  ASSERT_TRUE(listing.ok());
  CheckpointListing l = *listing;
  for (TensorRecord& r : l.tensors) {
    if (r.name == "model.visual.blocks.0.attn.qkv.weight") r.name = "model.visual.blocks.0.attn.qkv_fused.weight";
    if (r.name == "model.visual.patch_embed.proj.weight") r.shape = {32, 3, 1, 14, 14};
    if (r.name == "model.visual.downsample.weight") r.dtype = "I8";
  }
  l.tensors.erase(std::remove_if(l.tensors.begin(), l.tensors.end(),
                                 [](const TensorRecord& r) {
                                   return r.name == "model.visual.merger.up_proj.weight" ||
                                          r.name.rfind("model.visual.blocks.1.", 0) == 0;
                                 }),
                  l.tensors.end());
  TensorRecord extra = l.tensors[0];
  extra.name = "model.visual.blocks.2.norm1.weight";
  extra.shape = {32};
  l.tensors.push_back(extra);
  const WeightPlan plan = PlanWeights(config, l);
  EXPECT_TRUE(plan.tensors.empty());
  for (const char* needle : {
           "unexpected key 'model.visual.blocks.0.attn.qkv_fused.weight'",
           "missing key 'model.visual.blocks.0.attn.qkv.weight' (visual.blocks.0.qkv.weight, expected shape [96, 32])",
           "shape mismatch: key 'model.visual.patch_embed.proj.weight'",
           "expected [32, 3, 2, 14, 14], found [32, 3, 1, 14, 14]",
           "unsupported dtype: key 'model.visual.downsample.weight'",
           "missing key 'model.visual.merger.up_proj.weight' (visual.merger.up.weight, expected shape [48, 64])",
           "config.json vision_config.depth is 2 but the checkpoint has no tensors for vision block(s) 1",
           "config.json vision_config.depth is 2 but the checkpoint has tensors for vision block(s) 2 too",
       }) {
    EXPECT_TRUE(HasProblem(plan, needle)) << needle;
  }
  EXPECT_EQ(plan.problems.size(), 7u);
}

TEST(Glm4vWeightMap, BaseModelPrefixesAndTheTextOnlyLayout) {
  const ModelConfig config = FixtureConfig();
  auto listing = ListCheckpoint(Glm4vFixture().string());
  ASSERT_TRUE(listing.ok());
  // Glm4vModel saved alone: "visual.*" and "language_model.*" (transformers adds "model.").
  CheckpointListing base = *listing;
  base.tensors.erase(std::remove_if(base.tensors.begin(), base.tensors.end(),
                                    [](const TensorRecord& r) { return r.name == "lm_head.weight"; }),
                     base.tensors.end());
  for (TensorRecord& r : base.tensors) r.name = r.name.substr(std::string("model.").size());
  const WeightPlan base_plan = PlanWeights(config, base);
  EXPECT_EQ(base_plan.problems, std::vector<std::string>{"missing key 'lm_head.weight' (lm_head.weight, "
                                                         "expected shape [256, 64])"});
  // The text-only layout ("model.layers.*") that transformers 5.24 does not load for glm4v.
  CheckpointListing old = *listing;
  for (TensorRecord& r : old.tensors) {
    if (r.name.rfind("model.language_model.", 0) == 0) r.name = "model." + r.name.substr(21);
    if (r.name.rfind("model.visual.", 0) == 0) r.name = r.name.substr(6);
  }
  const WeightPlan old_plan = PlanWeights(config, old);
  EXPECT_TRUE(HasProblem(old_plan, "unexpected key 'model.layers.0.input_layernorm.weight' in "));
  EXPECT_TRUE(HasProblem(old_plan, "glm4v keeps the text model under 'model.language_model.'"));
  EXPECT_TRUE(HasProblem(old_plan, "missing key 'model.language_model.embed_tokens.weight'"));
  EXPECT_FALSE(HasProblem(old_plan, "visual.patch_embed"));  // "visual.*" is accepted
}

TEST(Glm4vWeightMap, HalfPrecisionCheckpointsPlanAlike) {
  const ModelConfig config = FixtureConfig();
  auto listing = ListCheckpoint(Glm4vFixture().string());
  ASSERT_TRUE(listing.ok());
  for (const char* dtype : {"BF16", "F16"}) {
    CheckpointListing l = *listing;
    for (TensorRecord& r : l.tensors) r.dtype = dtype;
    const WeightPlan plan = PlanWeights(config, l);
    EXPECT_TRUE(plan.problems.empty()) << dtype;
    EXPECT_EQ(plan.stored_dtype, std::string(dtype) == "BF16" ? "bfloat16" : "float16");
    EXPECT_EQ(plan.tensors.size(), 58u);
  }
}

TEST(Glm4vWeightMap, TextConfigsPlanNoVisionTensors) {
  ModelConfig text = FixtureConfig();
  text.architecture = Architecture::kGlm4;
  text.vision.reset();
  for (const MappedTensor& t : CanonicalTensors(text)) {
    EXPECT_EQ(t.canonical.rfind("visual.", 0), std::string::npos) << t.canonical;
  }
}

// ---- loading ----

TEST(Glm4vLoad, VisionWeightsAreLoadedAsTheCheckpointStoresThem) {
  CheckpointPlan parsed;
  auto report = PlanCheckpoint(Glm4vFixture().string(), &parsed);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_TRUE(report->loadable()) << report->problems[0];
  EXPECT_EQ(report->info.architecture, "glm4v");
  auto stored = ReadCheckpointTensors(parsed.listing);
  ASSERT_TRUE(stored.ok()) << stored.status();
  const at::Tensor patch = stored->at("model.visual.patch_embed.proj.weight").clone();
  const at::Tensor merger_norm_bias = stored->at("model.visual.merger.post_projection_norm.bias").clone();
  auto model = GlmModel::Build(parsed.config, parsed.plan, &*stored, at::kFloat, at::Device(at::kCPU));
  ASSERT_TRUE(model.ok()) << model.status();
  const VisionWeights* v = (*model)->vision();
  ASSERT_NE(v, nullptr);
  EXPECT_TRUE(at::equal(v->patch_embed_weight, patch));
  EXPECT_TRUE(at::equal(v->merger_norm_bias, merger_norm_bias));
  ASSERT_EQ(v->blocks.size(), 2u);
  EXPECT_EQ(v->blocks[1].qkv_weight.sizes(), (std::vector<int64_t>{96, 32}));
  EXPECT_FALSE(v->blocks[1].qkv_bias.defined());
  EXPECT_EQ(v->downsample_weight.sizes(), (std::vector<int64_t>{64, 32, 2, 2}));
  EXPECT_EQ(v->position_embedding.sizes(), (std::vector<int64_t>{16, 32}));
  EXPECT_TRUE(stored->empty()) << "every stored tensor converted and released";
}

TEST(Glm4vLoad, RandomWeightsGiveTheVisionTensorsTheirShapes) {
  const ModelConfig config = FixtureConfig();
  auto model = GlmModel::BuildRandom(config, at::kFloat, at::Device(at::kCPU), 3);
  ASSERT_TRUE(model.ok()) << model.status();
  const VisionWeights* v = (*model)->vision();
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->patch_embed_weight.sizes(), (std::vector<int64_t>{32, 3, 2, 14, 14}));
  EXPECT_EQ(v->merger_gate.sizes(), (std::vector<int64_t>{48, 64}));
  EXPECT_TRUE(at::equal(v->merger_norm_weight, at::ones({64})));
  EXPECT_TRUE(at::equal(v->merger_norm_bias, at::zeros({64})));
  // The runner counts them in the parameter count.
  LoadOptions options;
  options.random_weights = true;
  auto runner = ModelRunner::Load(Glm4vFixture().string(), options);
  ASSERT_TRUE(runner.ok()) << runner.status();
  CheckpointPlan parsed;
  auto report = PlanCheckpoint(Glm4vFixture().string(), &parsed);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ((*runner)->info().parameter_count, report->info.parameter_count);
  EXPECT_EQ((*runner)->info().architecture, "glm4v");
}

}  // namespace
}  // namespace glmserve
