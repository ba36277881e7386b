// Key mapping and validation on synthetic listings: expected names, rows and messages are
// written out by hand from the checkpoint layouts, not computed by the code under test.
#include "runtime/checkpoint/weight_map.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace glmserve {
namespace {

ModelConfig TinyConfig(Architecture arch) {
  ModelConfig c;
  c.architecture = arch;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.vocab_size = 10;
  c.max_position_embeddings = 32;
  c.rotary_dim = 2;
  c.attention_bias = true;
  c.sandwich_norms = arch == Architecture::kGlm4;
  return c;
}

TensorRecord Rec(const std::string& name, std::vector<int64_t> shape, const std::string& dtype = "F32") {
  TensorRecord r;
  r.name = name;
  r.file = "model.safetensors";
  r.dtype = dtype;
  r.shape = std::move(shape);
  return r;
}

CheckpointListing HfGlmListing(const std::string& prefix = "") {
  CheckpointListing l;
  l.tensors = {
      Rec(prefix + "model.embed_tokens.weight", {10, 8}),
      Rec(prefix + "model.layers.0.input_layernorm.weight", {8}),
      Rec(prefix + "model.layers.0.self_attn.q_proj.weight", {8, 8}),
      Rec(prefix + "model.layers.0.self_attn.k_proj.weight", {4, 8}),
      Rec(prefix + "model.layers.0.self_attn.v_proj.weight", {4, 8}),
      Rec(prefix + "model.layers.0.self_attn.q_proj.bias", {8}),
      Rec(prefix + "model.layers.0.self_attn.k_proj.bias", {4}),
      Rec(prefix + "model.layers.0.self_attn.v_proj.bias", {4}),
      Rec(prefix + "model.layers.0.self_attn.o_proj.weight", {8, 8}),
      Rec(prefix + "model.layers.0.post_attention_layernorm.weight", {8}),
      Rec(prefix + "model.layers.0.mlp.gate_up_proj.weight", {24, 8}),
      Rec(prefix + "model.layers.0.mlp.down_proj.weight", {8, 12}),
      Rec(prefix + "model.norm.weight", {8}),
      Rec(prefix + "lm_head.weight", {10, 8}),
  };
  return l;
}

const MappedTensor* Find(const WeightPlan& plan, const std::string& canonical) {
  for (const MappedTensor& t : plan.tensors) {
    if (t.canonical == canonical) return &t;
  }
  return nullptr;
}

bool HasProblem(const WeightPlan& plan, const std::string& text) {
  return std::any_of(plan.problems.begin(), plan.problems.end(),
                     [&](const std::string& p) { return p.find(text) != std::string::npos; });
}

TEST(WeightMapTest, TransformersGlmMapsEveryKeyAndSplitsGateUp) {
  WeightPlan plan = PlanWeights(TinyConfig(Architecture::kGlm), HfGlmListing());
  ASSERT_TRUE(plan.problems.empty()) << ::testing::PrintToString(plan.problems);
  const MappedTensor* up = Find(plan, "layers.0.up.weight");
  ASSERT_NE(up, nullptr);
  EXPECT_EQ(up->source_key, "model.layers.0.mlp.gate_up_proj.weight");
  EXPECT_EQ(up->row_begin, 12);
  EXPECT_EQ(up->row_end, 24);
  EXPECT_EQ(plan.stored_dtype, "float32");
  // 80 embed + 8 norm + 64 q + 32 k + 32 v + 16 bias + 64 o + 8 norm + 192 gate/up + 96 down + 8 + 80 head
  EXPECT_EQ(plan.parameter_count, 680);
}

TEST(WeightMapTest, OriginalLayoutSplitsQueryKeyValueIntoQKV) {
  CheckpointListing l;
  l.tensors = {
      Rec("transformer.embedding.word_embeddings.weight", {10, 8}),
      Rec("transformer.rotary_pos_emb.inv_freq", {1}),
      Rec("transformer.encoder.layers.0.input_layernorm.weight", {8}),
      Rec("transformer.encoder.layers.0.self_attention.query_key_value.weight", {16, 8}),
      Rec("transformer.encoder.layers.0.self_attention.query_key_value.bias", {16}),
      Rec("transformer.encoder.layers.0.self_attention.dense.weight", {8, 8}),
      Rec("transformer.encoder.layers.0.post_attention_layernorm.weight", {8}),
      Rec("transformer.encoder.layers.0.mlp.dense_h_to_4h.weight", {24, 8}),
      Rec("transformer.encoder.layers.0.mlp.dense_4h_to_h.weight", {8, 12}),
      Rec("transformer.encoder.final_layernorm.weight", {8}),
      Rec("transformer.output_layer.weight", {10, 8}),
  };
  WeightPlan plan = PlanWeights(TinyConfig(Architecture::kChatGLM), l);
  ASSERT_TRUE(plan.problems.empty()) << ::testing::PrintToString(plan.problems);
  const MappedTensor* k = Find(plan, "layers.0.k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->row_begin, 8);  // q has 2 heads x 4 = 8 rows, then k 4 rows, then v 4 rows
  EXPECT_EQ(k->row_end, 12);
  const MappedTensor* v_bias = Find(plan, "layers.0.v.bias");
  ASSERT_NE(v_bias, nullptr);
  EXPECT_EQ(v_bias->row_begin, 12);
  EXPECT_NE(
      std::find(plan.mapping.begin(), plan.mapping.end(),
                "transformer.rotary_pos_emb.inv_freq -> dropped: derived rotary buffer, recomputed from the config"),
      plan.mapping.end());
}

TEST(WeightMapTest, WrapperPrefixesAreStripped) {
  for (const std::string prefix : {"module.", "base_model.model."}) {
    WeightPlan plan = PlanWeights(TinyConfig(Architecture::kGlm), HfGlmListing(prefix));
    EXPECT_TRUE(plan.problems.empty()) << prefix << ::testing::PrintToString(plan.problems);
    ASSERT_NE(Find(plan, "embed.weight"), nullptr);
    EXPECT_EQ(Find(plan, "embed.weight")->source_key, prefix + "model.embed_tokens.weight");
  }
}

TEST(WeightMapTest, EveryProblemIsCollectedInOnePass) {
  CheckpointListing l = HfGlmListing();
  l.problems.push_back("model-00002-of-00002.safetensors: truncated");
  l.tensors.erase(l.tensors.begin() + 11);                                 // down_proj missing
  l.tensors[2].shape = {9, 8};                                             // q_proj mis-shaped
  l.tensors[4].dtype = "F64";                                              // v_proj unsupported dtype
  l.tensors.push_back(Rec("model.layers.0.self_attn.extra.weight", {1}));  // unexpected
  WeightPlan plan = PlanWeights(TinyConfig(Architecture::kGlm), l);
  EXPECT_TRUE(HasProblem(plan, "model-00002-of-00002.safetensors: truncated"));
  EXPECT_TRUE(HasProblem(
      plan, "missing key 'model.layers.0.mlp.down_proj.weight' (layers.0.down.weight, expected shape [8, 12])"));
  EXPECT_TRUE(HasProblem(plan,
                         "shape mismatch: key 'model.layers.0.self_attn.q_proj.weight' in model.safetensors: expected "
                         "[8, 8], found [9, 8]"));
  EXPECT_TRUE(HasProblem(
      plan, "unsupported dtype: key 'model.layers.0.self_attn.v_proj.weight' in model.safetensors is stored as F64"));
  EXPECT_TRUE(HasProblem(plan, "unexpected key 'model.layers.0.self_attn.extra.weight'"));
  EXPECT_EQ(plan.problems.size(), 5u) << ::testing::PrintToString(plan.problems);
  EXPECT_TRUE(plan.tensors.empty());
}

TEST(WeightMapTest, LayerCountMismatchIsSummarisedNotListedKeyByKey) {
  ModelConfig config = TinyConfig(Architecture::kGlm);
  config.num_layers = 2;
  WeightPlan plan = PlanWeights(config, HfGlmListing());
  ASSERT_EQ(plan.problems.size(), 1u) << ::testing::PrintToString(plan.problems);
  EXPECT_EQ(plan.problems[0],
            "config.json num_hidden_layers is 2 but the checkpoint has no tensors for layer(s) 1 "
            "(e.g. 'model.layers.1.input_layernorm.weight' is absent)");

  config.num_layers = 1;
  CheckpointListing extra = HfGlmListing();
  extra.tensors.push_back(Rec("model.layers.1.input_layernorm.weight", {8}));
  plan = PlanWeights(config, extra);
  ASSERT_EQ(plan.problems.size(), 1u) << ::testing::PrintToString(plan.problems);
  EXPECT_EQ(plan.problems[0], "config.json num_hidden_layers is 1 but the checkpoint has tensors for layer(s) 1 too");
}

TEST(WeightMapTest, VocabMismatchIsExplained) {
  ModelConfig config = TinyConfig(Architecture::kGlm);
  config.vocab_size = 12;
  WeightPlan plan = PlanWeights(config, HfGlmListing());
  EXPECT_TRUE(
      HasProblem(plan, "config.json vocab_size is 12 but the embedding 'model.embed_tokens.weight' has 10 rows"));
  EXPECT_TRUE(HasProblem(plan, "shape mismatch: key 'lm_head.weight'"));
}

TEST(WeightMapTest, TiedEmbeddingsNeedNoLmHeadAndBiasFollowsConfig) {
  ModelConfig config = TinyConfig(Architecture::kGlm);
  config.tie_word_embeddings = true;
  CheckpointListing l = HfGlmListing();
  l.tensors.pop_back();  // no lm_head
  WeightPlan plan = PlanWeights(config, l);
  EXPECT_TRUE(plan.problems.empty()) << ::testing::PrintToString(plan.problems);
  EXPECT_EQ(Find(plan, "lm_head.weight"), nullptr);

  config.attention_bias = false;
  plan = PlanWeights(config, l);
  EXPECT_TRUE(HasProblem(plan,
                         "unexpected key 'model.layers.0.self_attn.q_proj.bias' in model.safetensors: config.json says "
                         "attention_bias is false"));
}

TEST(WeightMapTest, Glm4NeedsSandwichNorms) {
  WeightPlan plan = PlanWeights(TinyConfig(Architecture::kGlm4), HfGlmListing());
  EXPECT_TRUE(HasProblem(plan, "missing key 'model.layers.0.post_self_attn_layernorm.weight'"));
  EXPECT_TRUE(HasProblem(plan, "missing key 'model.layers.0.post_mlp_layernorm.weight'"));
}

TEST(WeightMapTest, DuplicateProvidersAreReported) {
  CheckpointListing l = HfGlmListing();
  l.tensors.push_back(Rec("model.layers.0.mlp.up_proj.weight", {12, 8}));
  WeightPlan plan = PlanWeights(TinyConfig(Architecture::kGlm), l);
  EXPECT_TRUE(HasProblem(plan,
                         "duplicate: keys 'model.layers.0.mlp.gate_up_proj.weight' and "
                         "'model.layers.0.mlp.up_proj.weight' both provide layers.0.up.weight"));
}

}  // namespace
}  // namespace glmserve
