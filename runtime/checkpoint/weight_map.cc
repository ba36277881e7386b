#include "runtime/checkpoint/weight_map.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace glmserve {
namespace {

// Canonical tensors ("slots"). Text-layer slots are named layers.{L}.<name>, vision-block
// slots visual.blocks.{L}.<name>.
enum class Slot {
  kEmbed,
  kLmHead,
  kFinalNorm,
  kInputNorm,
  kPostAttnNorm,
  kMlpNorm,
  kPostMlpNorm,
  kQWeight,
  kKWeight,
  kVWeight,
  kQBias,
  kKBias,
  kVBias,
  kOWeight,
  kGateWeight,
  kUpWeight,
  kDownWeight,
  // glm4v's vision tower, kept as transformers stores it (qkv fused, convolutions 5-D / 4-D).
  kVisPatchEmbedWeight,
  kVisPatchEmbedBias,
  kVisPostConvNorm,
  kVisPositionEmbedding,
  kVisNorm1,
  kVisNorm2,
  kVisQkvWeight,
  kVisQkvBias,
  kVisProjWeight,
  kVisGateWeight,
  kVisUpWeight,
  kVisDownWeight,
  kVisPostNorm,
  kVisDownsampleWeight,
  kVisDownsampleBias,
  kMergerProjWeight,
  kMergerNormWeight,
  kMergerNormBias,
  kMergerGateWeight,
  kMergerUpWeight,
  kMergerDownWeight,
};

// How many copies of a slot a model has: one, one per text layer, one per vision block.
enum class Scope { kModel, kTextLayer, kVisionModel, kVisionBlock };

struct SlotInfo {
  Slot slot;
  const char* name;  // canonical name (per-layer/per-block slots get their prefix)
  Scope scope;
};

constexpr SlotInfo kSlots[] = {
    {Slot::kEmbed, "embed.weight", Scope::kModel},
    {Slot::kLmHead, "lm_head.weight", Scope::kModel},
    {Slot::kFinalNorm, "final_norm.weight", Scope::kModel},
    {Slot::kInputNorm, "input_norm.weight", Scope::kTextLayer},
    {Slot::kPostAttnNorm, "post_attn_norm.weight", Scope::kTextLayer},
    {Slot::kMlpNorm, "mlp_norm.weight", Scope::kTextLayer},
    {Slot::kPostMlpNorm, "post_mlp_norm.weight", Scope::kTextLayer},
    {Slot::kQWeight, "q.weight", Scope::kTextLayer},
    {Slot::kKWeight, "k.weight", Scope::kTextLayer},
    {Slot::kVWeight, "v.weight", Scope::kTextLayer},
    {Slot::kQBias, "q.bias", Scope::kTextLayer},
    {Slot::kKBias, "k.bias", Scope::kTextLayer},
    {Slot::kVBias, "v.bias", Scope::kTextLayer},
    {Slot::kOWeight, "o.weight", Scope::kTextLayer},
    {Slot::kGateWeight, "gate.weight", Scope::kTextLayer},
    {Slot::kUpWeight, "up.weight", Scope::kTextLayer},
    {Slot::kDownWeight, "down.weight", Scope::kTextLayer},
    {Slot::kVisPatchEmbedWeight, "visual.patch_embed.weight", Scope::kVisionModel},
    {Slot::kVisPatchEmbedBias, "visual.patch_embed.bias", Scope::kVisionModel},
    {Slot::kVisPostConvNorm, "visual.post_conv_norm.weight", Scope::kVisionModel},
    {Slot::kVisPositionEmbedding, "visual.position_embedding.weight", Scope::kVisionModel},
    {Slot::kVisNorm1, "norm1.weight", Scope::kVisionBlock},
    {Slot::kVisNorm2, "norm2.weight", Scope::kVisionBlock},
    {Slot::kVisQkvWeight, "qkv.weight", Scope::kVisionBlock},
    {Slot::kVisQkvBias, "qkv.bias", Scope::kVisionBlock},
    {Slot::kVisProjWeight, "proj.weight", Scope::kVisionBlock},
    {Slot::kVisGateWeight, "gate.weight", Scope::kVisionBlock},
    {Slot::kVisUpWeight, "up.weight", Scope::kVisionBlock},
    {Slot::kVisDownWeight, "down.weight", Scope::kVisionBlock},
    {Slot::kVisPostNorm, "visual.post_norm.weight", Scope::kVisionModel},
    {Slot::kVisDownsampleWeight, "visual.downsample.weight", Scope::kVisionModel},
    {Slot::kVisDownsampleBias, "visual.downsample.bias", Scope::kVisionModel},
    {Slot::kMergerProjWeight, "visual.merger.proj.weight", Scope::kVisionModel},
    {Slot::kMergerNormWeight, "visual.merger.norm.weight", Scope::kVisionModel},
    {Slot::kMergerNormBias, "visual.merger.norm.bias", Scope::kVisionModel},
    {Slot::kMergerGateWeight, "visual.merger.gate.weight", Scope::kVisionModel},
    {Slot::kMergerUpWeight, "visual.merger.up.weight", Scope::kVisionModel},
    {Slot::kMergerDownWeight, "visual.merger.down.weight", Scope::kVisionModel},
};

const SlotInfo& Info(Slot slot) { return kSlots[static_cast<int>(slot)]; }

// Info() indexes kSlots by the enum: the table must list the slots in enum order.
constexpr bool SlotsInEnumOrder() {
  for (size_t i = 0; i < std::size(kSlots); ++i) {
    if (static_cast<size_t>(kSlots[i].slot) != i) return false;
  }
  return true;
}
static_assert(SlotsInEnumOrder(), "kSlots must list every Slot in enum order");

enum class Family { kOriginal, kTransformers, kGlm4v };

// The remapping table. `source` has "{L}" where the layer (or vision block) index goes. Several targets: the
// stored tensor is split along dim 0 in that order. No targets: the key is dropped (`why`).
struct KeyRule {
  Family family;
  const char* source;
  std::vector<Slot> targets;
  const char* why = "";
};

const std::vector<KeyRule>& KeyRules() {
  static const std::vector<KeyRule> rules = {
      // transformers GlmForCausalLM / Glm4ForCausalLM
      {Family::kTransformers, "model.embed_tokens.weight", {Slot::kEmbed}},
      {Family::kTransformers, "model.layers.{L}.input_layernorm.weight", {Slot::kInputNorm}},
      {Family::kTransformers, "model.layers.{L}.self_attn.q_proj.weight", {Slot::kQWeight}},
      {Family::kTransformers, "model.layers.{L}.self_attn.k_proj.weight", {Slot::kKWeight}},
      {Family::kTransformers, "model.layers.{L}.self_attn.v_proj.weight", {Slot::kVWeight}},
      {Family::kTransformers, "model.layers.{L}.self_attn.q_proj.bias", {Slot::kQBias}},
      {Family::kTransformers, "model.layers.{L}.self_attn.k_proj.bias", {Slot::kKBias}},
      {Family::kTransformers, "model.layers.{L}.self_attn.v_proj.bias", {Slot::kVBias}},
      {Family::kTransformers, "model.layers.{L}.self_attn.o_proj.weight", {Slot::kOWeight}},
      {Family::kTransformers, "model.layers.{L}.post_self_attn_layernorm.weight", {Slot::kPostAttnNorm}},
      {Family::kTransformers, "model.layers.{L}.post_attention_layernorm.weight", {Slot::kMlpNorm}},
      {Family::kTransformers, "model.layers.{L}.post_mlp_layernorm.weight", {Slot::kPostMlpNorm}},
      {Family::kTransformers, "model.layers.{L}.mlp.gate_up_proj.weight", {Slot::kGateWeight, Slot::kUpWeight}},
      {Family::kTransformers, "model.layers.{L}.mlp.gate_proj.weight", {Slot::kGateWeight}},
      {Family::kTransformers, "model.layers.{L}.mlp.up_proj.weight", {Slot::kUpWeight}},
      {Family::kTransformers, "model.layers.{L}.mlp.down_proj.weight", {Slot::kDownWeight}},
      {Family::kTransformers, "model.norm.weight", {Slot::kFinalNorm}},
      {Family::kTransformers, "lm_head.weight", {Slot::kLmHead}},
      {Family::kTransformers, "model.rotary_emb.inv_freq", {}, "derived rotary buffer, recomputed from the config"},
      {Family::kTransformers,
       "model.layers.{L}.self_attn.rotary_emb.inv_freq",
       {},
       "derived rotary buffer, recomputed from the config"},
      // original remote-code ChatGLM2/3 and GLM-4-9B-chat
      {Family::kOriginal, "transformer.embedding.word_embeddings.weight", {Slot::kEmbed}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.input_layernorm.weight", {Slot::kInputNorm}},
      {Family::kOriginal,
       "transformer.encoder.layers.{L}.self_attention.query_key_value.weight",
       {Slot::kQWeight, Slot::kKWeight, Slot::kVWeight}},
      {Family::kOriginal,
       "transformer.encoder.layers.{L}.self_attention.query_key_value.bias",
       {Slot::kQBias, Slot::kKBias, Slot::kVBias}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.self_attention.dense.weight", {Slot::kOWeight}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.post_attention_layernorm.weight", {Slot::kMlpNorm}},
      {Family::kOriginal,
       "transformer.encoder.layers.{L}.mlp.dense_h_to_4h.weight",
       {Slot::kGateWeight, Slot::kUpWeight}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.mlp.dense_4h_to_h.weight", {Slot::kDownWeight}},
      {Family::kOriginal, "transformer.encoder.final_layernorm.weight", {Slot::kFinalNorm}},
      {Family::kOriginal, "transformer.output_layer.weight", {Slot::kLmHead}},
      {Family::kOriginal,
       "transformer.rotary_pos_emb.inv_freq",
       {},
       "derived rotary buffer, recomputed from the config"},
      // transformers Glm4vForConditionalGeneration (modeling_glm4v.py): the glm4 text model under
      // model.language_model, the vision tower under model.visual.
      {Family::kGlm4v, "model.language_model.embed_tokens.weight", {Slot::kEmbed}},
      {Family::kGlm4v, "model.language_model.layers.{L}.input_layernorm.weight", {Slot::kInputNorm}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.q_proj.weight", {Slot::kQWeight}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.k_proj.weight", {Slot::kKWeight}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.v_proj.weight", {Slot::kVWeight}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.q_proj.bias", {Slot::kQBias}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.k_proj.bias", {Slot::kKBias}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.v_proj.bias", {Slot::kVBias}},
      {Family::kGlm4v, "model.language_model.layers.{L}.self_attn.o_proj.weight", {Slot::kOWeight}},
      {Family::kGlm4v, "model.language_model.layers.{L}.post_self_attn_layernorm.weight", {Slot::kPostAttnNorm}},
      {Family::kGlm4v, "model.language_model.layers.{L}.post_attention_layernorm.weight", {Slot::kMlpNorm}},
      {Family::kGlm4v, "model.language_model.layers.{L}.post_mlp_layernorm.weight", {Slot::kPostMlpNorm}},
      {Family::kGlm4v, "model.language_model.layers.{L}.mlp.gate_up_proj.weight", {Slot::kGateWeight, Slot::kUpWeight}},
      {Family::kGlm4v, "model.language_model.layers.{L}.mlp.down_proj.weight", {Slot::kDownWeight}},
      {Family::kGlm4v, "model.language_model.norm.weight", {Slot::kFinalNorm}},
      {Family::kGlm4v, "lm_head.weight", {Slot::kLmHead}},
      {Family::kGlm4v,
       "model.language_model.rotary_emb.inv_freq",
       {},
       "derived rotary buffer, recomputed from the config"},
      {Family::kGlm4v, "model.visual.patch_embed.proj.weight", {Slot::kVisPatchEmbedWeight}},
      {Family::kGlm4v, "model.visual.patch_embed.proj.bias", {Slot::kVisPatchEmbedBias}},
      {Family::kGlm4v, "model.visual.post_conv_layernorm.weight", {Slot::kVisPostConvNorm}},
      {Family::kGlm4v, "model.visual.embeddings.position_embedding.weight", {Slot::kVisPositionEmbedding}},
      {Family::kGlm4v, "model.visual.blocks.{L}.norm1.weight", {Slot::kVisNorm1}},
      {Family::kGlm4v, "model.visual.blocks.{L}.norm2.weight", {Slot::kVisNorm2}},
      {Family::kGlm4v, "model.visual.blocks.{L}.attn.qkv.weight", {Slot::kVisQkvWeight}},
      {Family::kGlm4v, "model.visual.blocks.{L}.attn.qkv.bias", {Slot::kVisQkvBias}},
      {Family::kGlm4v, "model.visual.blocks.{L}.attn.proj.weight", {Slot::kVisProjWeight}},
      {Family::kGlm4v, "model.visual.blocks.{L}.mlp.gate_proj.weight", {Slot::kVisGateWeight}},
      {Family::kGlm4v, "model.visual.blocks.{L}.mlp.up_proj.weight", {Slot::kVisUpWeight}},
      {Family::kGlm4v, "model.visual.blocks.{L}.mlp.down_proj.weight", {Slot::kVisDownWeight}},
      {Family::kGlm4v, "model.visual.post_layernorm.weight", {Slot::kVisPostNorm}},
      {Family::kGlm4v, "model.visual.downsample.weight", {Slot::kVisDownsampleWeight}},
      {Family::kGlm4v, "model.visual.downsample.bias", {Slot::kVisDownsampleBias}},
      {Family::kGlm4v, "model.visual.merger.proj.weight", {Slot::kMergerProjWeight}},
      {Family::kGlm4v, "model.visual.merger.post_projection_norm.weight", {Slot::kMergerNormWeight}},
      {Family::kGlm4v, "model.visual.merger.post_projection_norm.bias", {Slot::kMergerNormBias}},
      {Family::kGlm4v, "model.visual.merger.gate_proj.weight", {Slot::kMergerGateWeight}},
      {Family::kGlm4v, "model.visual.merger.up_proj.weight", {Slot::kMergerUpWeight}},
      {Family::kGlm4v, "model.visual.merger.down_proj.weight", {Slot::kMergerDownWeight}},
      {Family::kGlm4v, "model.visual.rotary_pos_emb.inv_freq", {}, "derived rotary buffer, recomputed from the config"},
  };
  return rules;
}

// Prefixes that wrappers add (DataParallel, PEFT, torch.compile); stripped before matching.
constexpr const char* kWrapperPrefixes[] = {"module.", "base_model.model.", "_orig_mod."};

// The name a stored key is matched under: wrapper prefixes stripped (appended to `*stripped`), and
// a transformers base model's (GlmModel, Glm4vModel) missing "model." added back, as transformers
// does when loading, so "visual.*" lands on "model.visual.*" too. `original`: the remote-code
// layout, whose names are taken as they are past the wrappers.
std::string CanonicalKey(std::string key, bool original, std::string* stripped) {
  for (bool again = true; again;) {
    again = false;
    for (const char* prefix : kWrapperPrefixes) {
      if (absl::StartsWith(key, prefix)) {
        *stripped += prefix;
        key = key.substr(std::string(prefix).size());
        again = true;
      }
    }
  }
  if (!original && !absl::StartsWith(key, "model.") && !absl::StartsWith(key, "lm_head.")) {
    *stripped += "(+model.)";
    key = "model." + key;
  }
  return key;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::vector<int64_t> SlotShape(Slot slot, const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_attention_heads} * c.head_dim,
                kv = int64_t{c.num_key_value_heads} * c.head_dim, f = c.intermediate_size, v = c.vocab_size;
  // Vision sizes (modeling_glm4v.py): the blocks' MLP is out_hidden_size wide, the merger's
  // intermediate_size; patch_embed is a Conv3d, downsample a Conv2d.
  const VisionConfig vc = c.vision.value_or(VisionConfig{});
  const int64_t vh = vc.hidden_size, vo = vc.out_hidden_size, vi = vc.intermediate_size, p = vc.patch_size,
                m = vc.spatial_merge_size;
  switch (slot) {
    case Slot::kEmbed:
    case Slot::kLmHead:
      return {v, h};
    case Slot::kFinalNorm:
    case Slot::kInputNorm:
    case Slot::kPostAttnNorm:
    case Slot::kMlpNorm:
    case Slot::kPostMlpNorm:
      return {h};
    case Slot::kQWeight:
      return {q, h};
    case Slot::kKWeight:
    case Slot::kVWeight:
      return {kv, h};
    case Slot::kQBias:
      return {q};
    case Slot::kKBias:
    case Slot::kVBias:
      return {kv};
    case Slot::kOWeight:
      return {h, q};
    case Slot::kGateWeight:
    case Slot::kUpWeight:
      return {f, h};
    case Slot::kDownWeight:
      return {h, f};
    case Slot::kVisPatchEmbedWeight:
      return {vh, vc.in_channels, vc.temporal_patch_size, p, p};
    case Slot::kVisPatchEmbedBias:
    case Slot::kVisPostConvNorm:
    case Slot::kVisNorm1:
    case Slot::kVisNorm2:
    case Slot::kVisPostNorm:
      return {vh};
    case Slot::kVisPositionEmbedding:
      return {vc.num_positions(), vh};
    case Slot::kVisQkvWeight:
      return {3 * vh, vh};
    case Slot::kVisQkvBias:
      return {3 * vh};
    case Slot::kVisProjWeight:
      return {vh, vh};
    case Slot::kVisGateWeight:
    case Slot::kVisUpWeight:
      return {vo, vh};
    case Slot::kVisDownWeight:
      return {vh, vo};
    case Slot::kVisDownsampleWeight:
      return {vo, vh, m, m};
    case Slot::kVisDownsampleBias:
    case Slot::kMergerNormWeight:
    case Slot::kMergerNormBias:
      return {vo};
    case Slot::kMergerProjWeight:
      return {vo, vo};
    case Slot::kMergerGateWeight:
    case Slot::kMergerUpWeight:
      return {vi, vo};
    case Slot::kMergerDownWeight:
      return {vo, vi};
  }
  return {};
}

// Why a slot is not part of this model, or "" when it is required.
const char* SlotAbsentReason(Slot slot, const ModelConfig& c) {
  const Scope scope = Info(slot).scope;
  if ((scope == Scope::kVisionModel || scope == Scope::kVisionBlock) && !c.vision.has_value()) {
    return "only glm4v has a vision tower";
  }
  switch (slot) {
    case Slot::kLmHead:
      return c.tie_word_embeddings ? "tie_word_embeddings is true" : "";
    case Slot::kQBias:
    case Slot::kKBias:
    case Slot::kVBias:
      return c.attention_bias
                 ? ""
                 : (c.architecture == Architecture::kChatGLM ? "add_qkv_bias is false" : "attention_bias is false");
    case Slot::kPostAttnNorm:
    case Slot::kPostMlpNorm:
      return c.sandwich_norms ? "" : "only glm4 has post-attention/post-MLP sandwich norms";
    case Slot::kVisQkvBias:
      return c.vision->attention_bias ? "" : "vision_config.attention_bias is false";
    default:
      return "";
  }
}

// Copies of a scope's slots in this model.
int32_t ScopeCount(Scope scope, const ModelConfig& c) {
  switch (scope) {
    case Scope::kModel:
      return 1;
    case Scope::kTextLayer:
      return std::max(c.num_layers, 0);
    case Scope::kVisionModel:
      return c.vision.has_value() ? 1 : 0;
    case Scope::kVisionBlock:
      return c.vision.has_value() ? std::max(c.vision->depth, 0) : 0;
  }
  return 0;
}

bool Indexed(Scope scope) { return scope == Scope::kTextLayer || scope == Scope::kVisionBlock; }

std::string SlotName(Slot slot, int32_t layer) {
  switch (Info(slot).scope) {
    case Scope::kTextLayer:
      return CanonicalLayerName(layer, Info(slot).name);
    case Scope::kVisionBlock:
      return absl::StrCat("visual.blocks.", layer, ".", Info(slot).name);
    default:
      return Info(slot).name;
  }
}

// Matches `key` against a rule pattern; sets *layer for per-layer patterns.
bool MatchPattern(const std::string& pattern, const std::string& key, int32_t* layer) {
  const size_t hole = pattern.find("{L}");
  if (hole == std::string::npos) return key == pattern;
  const std::string prefix = pattern.substr(0, hole), suffix = pattern.substr(hole + 3);
  if (key.size() <= prefix.size() + suffix.size() || !absl::StartsWith(key, prefix) || !absl::EndsWith(key, suffix))
    return false;
  const std::string digits = key.substr(prefix.size(), key.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.size() > 6 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  return absl::SimpleAtoi(digits, layer);
}

std::string Instantiate(const std::string& pattern, int32_t layer) {
  const size_t hole = pattern.find("{L}");
  if (hole == std::string::npos) return pattern;
  return absl::StrCat(pattern.substr(0, hole), layer, pattern.substr(hole + 3));
}

const char* DtypeName(const std::string& stored) {
  if (stored == "F32") return "float32";
  if (stored == "F16") return "float16";
  if (stored == "BF16") return "bfloat16";
  return nullptr;
}

struct SlotKey {
  Slot slot;
  int32_t layer;
  bool operator<(const SlotKey& o) const { return std::tie(layer, slot) < std::tie(o.layer, o.slot); }
};

}  // namespace

std::string CanonicalLayerName(int32_t layer, const char* slot) { return absl::StrCat("layers.", layer, ".", slot); }

std::vector<MappedTensor> CanonicalTensors(const ModelConfig& config) {
  std::vector<MappedTensor> tensors;
  for (Scope scope : {Scope::kModel, Scope::kTextLayer, Scope::kVisionModel, Scope::kVisionBlock}) {
    for (int32_t l = 0; l < ScopeCount(scope, config); ++l) {
      for (const SlotInfo& info : kSlots) {
        if (info.scope != scope || *SlotAbsentReason(info.slot, config)) continue;
        MappedTensor t;
        t.canonical = SlotName(info.slot, Indexed(scope) ? l : -1);
        t.source_key = t.canonical;
        t.shape = SlotShape(info.slot, config);
        t.row_end = t.shape[0];
        tensors.push_back(std::move(t));
      }
    }
  }
  return tensors;
}

WeightPlan PlanWeights(const ModelConfig& config, const CheckpointListing& listing) {
  WeightPlan plan;
  plan.problems = listing.problems;
  const Family family = config.architecture == Architecture::kChatGLM ? Family::kOriginal
                        : config.architecture == Architecture::kGlm4v ? Family::kGlm4v
                                                                      : Family::kTransformers;
  const bool original = family == Family::kOriginal;
  const bool glm4v = family == Family::kGlm4v;
  const char* vocab_field = VocabSizeField(config.architecture);

  // The indexed scopes: text layers and vision blocks, each checked for indices beyond the
  // config and for indices with no tensors at all.
  struct IndexedScope {
    Scope scope;
    const char* count_field;  // the config field that sets the count
    const char* what;         // "layer(s)" / "vision block(s)"
    const char* first_key;    // a key every index has, to name an empty one
    int32_t count;
    std::vector<bool> has_tensors;
    std::set<int32_t> beyond_config;
    bool empty_reported = false;
  };
  std::vector<IndexedScope> indexed;
  indexed.push_back({Scope::kTextLayer,
                     original ? "num_layers"
                     : glm4v  ? "text_config.num_hidden_layers"
                              : "num_hidden_layers",
                     "layer(s)",
                     original ? "transformer.encoder.layers.{L}.input_layernorm.weight"
                     : glm4v  ? "model.language_model.layers.{L}.input_layernorm.weight"
                              : "model.layers.{L}.input_layernorm.weight",
                     ScopeCount(Scope::kTextLayer, config),
                     {},
                     {},
                     false});
  if (glm4v) {
    indexed.push_back({Scope::kVisionBlock,
                       "vision_config.depth",
                       "vision block(s)",
                       "model.visual.blocks.{L}.norm1.weight",
                       ScopeCount(Scope::kVisionBlock, config),
                       {},
                       {},
                       false});
  }
  for (IndexedScope& s : indexed) s.has_tensors.assign(s.count, false);
  auto scope_of = [&](Scope scope) -> IndexedScope* {
    for (IndexedScope& s : indexed) {
      if (s.scope == scope) return &s;
    }
    return nullptr;
  };

  std::map<SlotKey, MappedTensor> provided;
  std::set<SlotKey> misshapen;
  int64_t misshapen_keys = 0;
  std::set<std::string> dtypes;
  constexpr int64_t kListedUnknownKeys = 20;
  int64_t unknown_keys = 0;

  for (const TensorRecord& record : listing.tensors) {
    std::string stripped;
    const std::string key = CanonicalKey(record.name, original, &stripped);
    const KeyRule* rule = nullptr;
    int32_t layer = -1;
    for (const KeyRule& candidate : KeyRules()) {
      if (candidate.family == family && MatchPattern(candidate.source, key, &layer)) {
        rule = &candidate;
        break;
      }
    }
    std::string note = stripped.empty() ? "" : absl::StrCat(" (wrapper prefix '", stripped, "' stripped)");
    if (rule == nullptr) {
      std::string hint;
      // The text-only layout: transformers 5.24 does not load it into Glm4vForConditionalGeneration
      // either (its keys come up missing there), so it is not guessed at here.
      if (glm4v && (absl::StartsWith(key, "model.layers.") || key == "model.embed_tokens.weight" ||
                    key == "model.norm.weight")) {
        hint =
            "; glm4v keeps the text model under 'model.language_model.' (transformers does not load this "
            "layout either)";
      }
      // The first few by name, then a count: a file of 100,000 stray names must not push the
      // missing keys (what the reader needs to know) out of the listed problems.
      if (++unknown_keys <= kListedUnknownKeys) {
        plan.problems.push_back(absl::StrCat("unexpected key '", record.name, "' in ", record.file, ": no ",
                                             ArchitectureName(config.architecture), " tensor has this name", hint));
      }
      continue;
    }
    if (rule->targets.empty()) {
      plan.mapping.push_back(absl::StrCat(record.name, " -> dropped: ", rule->why, note));
      continue;
    }
    if (IndexedScope* scope = scope_of(Info(rule->targets[0]).scope); scope != nullptr) {
      if (layer >= scope->count) {
        scope->beyond_config.insert(layer);
        continue;
      }
      scope->has_tensors[layer] = true;
    }

    const char* dtype = DtypeName(record.dtype);
    if (dtype == nullptr) {
      plan.problems.push_back(absl::StrCat("unsupported dtype: key '", record.name, "' in ", record.file,
                                           " is stored as ", record.dtype, "; expected F32, F16 or BF16"));
    } else {
      dtypes.insert(dtype);
    }
    // Expected stored shape: the targets stacked along dim 0.
    std::vector<int64_t> expected = SlotShape(rule->targets[0], config);
    std::vector<std::string> absent;
    for (size_t i = 1; i < rule->targets.size(); ++i) expected[0] += SlotShape(rule->targets[i], config)[0];
    // An lm_head stored beside tie_word_embeddings is read: the model ties the two only where they
    // hold the same values (transformers keeps a different stored lm_head untied, and its outputs
    // are the reference).
    const bool tied_lm_head =
        config.tie_word_embeddings && rule->targets.size() == 1 && rule->targets[0] == Slot::kLmHead;
    for (Slot slot : rule->targets) {
      if (const char* why = SlotAbsentReason(slot, config); *why && !tied_lm_head) absent.push_back(why);
    }
    if (!absent.empty()) {
      plan.problems.push_back(
          absl::StrCat("unexpected key '", record.name, "' in ", record.file, ": config.json says ", absent[0]));
      continue;
    }
    if (tied_lm_head) {
      note = absl::StrCat(note,
                          " (beside tie_word_embeddings: used where it differs from embed.weight, as "
                          "transformers does; else lm_head reuses embed.weight)");
    }
    if (record.shape != expected) {
      plan.problems.push_back(absl::StrCat("shape mismatch: key '", record.name, "' in ", record.file, ": expected ",
                                           ShapeString(expected), ", found ", ShapeString(record.shape)));
      ++misshapen_keys;
      for (Slot slot : rule->targets) misshapen.insert(SlotKey{slot, layer});  // present, not missing
      continue;
    }
    std::vector<std::string> targets_text;
    int64_t row = 0;
    for (Slot slot : rule->targets) {
      MappedTensor mapped;
      mapped.canonical = SlotName(slot, layer);
      mapped.source_key = record.name;
      mapped.source_file = record.file;
      mapped.shape = SlotShape(slot, config);
      mapped.row_begin = row;
      mapped.row_end = row + mapped.shape[0];
      row = mapped.row_end;
      targets_text.push_back(rule->targets.size() == 1 ? mapped.canonical
                                                       : absl::StrCat(mapped.canonical, " [rows ", mapped.row_begin,
                                                                      ":", mapped.row_end, "]"));
      auto [it, inserted] = provided.emplace(SlotKey{slot, layer}, mapped);
      if (!inserted) {
        plan.problems.push_back(absl::StrCat("duplicate: keys '", it->second.source_key, "' and '", record.name,
                                             "' both provide ", mapped.canonical));
      }
    }
    plan.mapping.push_back(absl::StrCat(record.name, " -> ", absl::StrJoin(targets_text, ", "), note));
  }
  if (unknown_keys > kListedUnknownKeys) {
    plan.problems.push_back(absl::StrCat("... and ", unknown_keys - kListedUnknownKeys, " more unexpected keys (",
                                         unknown_keys, " in all; the first ", kListedUnknownKeys, " are listed)"));
  }

  // A key that may be in a weight file that could not be read (reported once, as unreadable) is
  // not reported again as missing.
  // The listing names them as stored, the checks below by their matched names.
  std::set<std::string> unreadable_keys;
  for (const std::string& stored : listing.unreadable_keys) {
    std::string ignored;
    unreadable_keys.insert(CanonicalKey(stored, original, &ignored));
  }
  auto maybe_unreadable = [&](const std::string& key) {
    return listing.unreadable_keys_unknown || unreadable_keys.count(key) > 0;
  };
  // A size config.json does not set is transformers' default: said so where a message quotes it.
  auto defaulted = [&](const std::string& field) {
    for (const std::string& d : config.defaulted_sizes) {
      if (absl::StartsWith(d, field + " ")) return true;
    }
    return false;
  };
  auto quoted = [&](const std::string& field, int64_t value) {
    return absl::StrCat("config.json ", field, " is ", value,
                        defaulted(field) ? " (absent from config.json: transformers' default)" : "");
  };
  for (IndexedScope& s : indexed) {
    if (!s.beyond_config.empty()) {
      plan.problems.push_back(absl::StrCat(quoted(s.count_field, s.count), " but the checkpoint has tensors for ",
                                           s.what, " ", absl::StrJoin(s.beyond_config, ", "), " too"));
    }
    std::vector<int32_t> empty;
    int32_t unreadable = 0;
    for (int32_t l = 0; l < s.count; ++l) {
      if (s.has_tensors[l]) continue;
      if (maybe_unreadable(Instantiate(s.first_key, l))) {
        ++unreadable;
      } else {
        empty.push_back(l);
      }
    }
    // All indices empty is not "too few layers" but missing keys, listed one by one below.
    s.empty_reported = !empty.empty() && static_cast<int32_t>(empty.size()) + unreadable < s.count;
    if (s.empty_reported) {
      plan.problems.push_back(absl::StrCat(quoted(s.count_field, s.count), " but the checkpoint has no tensors for ",
                                           s.what, " ", absl::StrJoin(empty, ", "), " (e.g. '",
                                           Instantiate(s.first_key, empty[0]), "' is absent)"));
    }
  }
  // Every required slot must be provided; an index with no tensors at all was reported above.
  auto display_source = [&](Slot slot, int32_t layer) {
    for (const KeyRule& rule : KeyRules()) {
      if (rule.family != family) continue;
      for (Slot target : rule.targets) {
        if (target == slot) return Instantiate(rule.source, layer);
      }
    }
    return SlotName(slot, layer);
  };
  std::set<std::string> reported_missing;
  for (Scope scope : {Scope::kModel, Scope::kTextLayer, Scope::kVisionModel, Scope::kVisionBlock}) {
    const IndexedScope* index_info = scope_of(scope);
    for (int32_t l = 0; l < ScopeCount(scope, config); ++l) {
      if (index_info != nullptr && !index_info->has_tensors[l] && index_info->empty_reported) continue;
      const int32_t layer = Indexed(scope) ? l : -1;
      for (const SlotInfo& info : kSlots) {
        if (info.scope != scope) continue;
        auto it = provided.find(SlotKey{info.slot, layer});
        // Provided despite an absent slot: only a stored lm_head beside tie_word_embeddings.
        if (it != provided.end()) {
          plan.tensors.push_back(it->second);
          continue;
        }
        if (*SlotAbsentReason(info.slot, config)) continue;
        if (misshapen.count(SlotKey{info.slot, layer}) > 0) continue;
        if (maybe_unreadable(display_source(info.slot, layer))) continue;
        // A fused stored key (query_key_value, gate_up_proj) provides several slots: named once.
        if (!reported_missing.insert(display_source(info.slot, layer)).second) continue;
        plan.problems.push_back(absl::StrCat("missing key '", display_source(info.slot, layer), "' (",
                                             SlotName(info.slot, layer), ", expected shape ",
                                             ShapeString(SlotShape(info.slot, config)), ")"));
      }
    }
  }
  // A vocabulary or hidden size that differs shows up as shape mismatches; say what it means
  // once, read off the embedding. The hidden size (often one config.json does not set, so
  // transformers' default 4096) goes first with the defaulted sizes below: they explain the shape
  // mismatches after them.
  const char* hidden_field = glm4v ? "text_config.hidden_size" : "hidden_size";
  std::vector<std::string> sizes;
  for (const TensorRecord& record : listing.tensors) {
    const bool is_embedding = absl::EndsWith(record.name, original ? "word_embeddings.weight" : "embed_tokens.weight");
    if (!is_embedding || record.shape.size() != 2) continue;
    if (record.shape[0] != config.vocab_size) {
      plan.problems.push_back(absl::StrCat(quoted(vocab_field, config.vocab_size), " but the embedding '", record.name,
                                           "' has ", record.shape[0], " rows"));
    }
    if (record.shape[1] != config.hidden_size) {
      sizes.push_back(absl::StrCat(quoted(hidden_field, config.hidden_size), " but the embedding '", record.name,
                                   "' has ", record.shape[1], " columns"));
    }
  }
  if (misshapen_keys > 0 && !config.defaulted_sizes.empty()) {
    sizes.push_back(absl::StrCat("config.json does not set ", absl::StrJoin(config.defaulted_sizes, ", "),
                                 ": transformers' defaults were used, and ", misshapen_keys,
                                 " stored tensor(s) have other shapes; set the sizes in config.json"));
  }
  plan.problems.insert(plan.problems.begin(), sizes.begin(), sizes.end());
  if (dtypes.size() == 1)
    plan.stored_dtype = *dtypes.begin();
  else if (dtypes.size() > 1)
    plan.stored_dtype = "mixed";
  for (const MappedTensor& t : plan.tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    plan.parameter_count += n;
  }
  if (!plan.problems.empty()) plan.tensors.clear();
  return plan;
}

}  // namespace glmserve
