#include "runtime/checkpoint/weight_map.h"

#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace glmserve {
namespace {

// Canonical tensors ("slots"). Per-layer slots are named layers.{L}.<name>.
enum class Slot {
  kEmbed, kLmHead, kFinalNorm,
  kInputNorm, kPostAttnNorm, kMlpNorm, kPostMlpNorm,
  kQWeight, kKWeight, kVWeight, kQBias, kKBias, kVBias, kOWeight,
  kGateWeight, kUpWeight, kDownWeight,
};

struct SlotInfo {
  Slot slot;
  const char* name;  // canonical name (per-layer slots get the "layers.{L}." prefix)
  bool per_layer;
};

constexpr SlotInfo kSlots[] = {
    {Slot::kEmbed, "embed.weight", false},
    {Slot::kLmHead, "lm_head.weight", false},
    {Slot::kFinalNorm, "final_norm.weight", false},
    {Slot::kInputNorm, "input_norm.weight", true},
    {Slot::kPostAttnNorm, "post_attn_norm.weight", true},
    {Slot::kMlpNorm, "mlp_norm.weight", true},
    {Slot::kPostMlpNorm, "post_mlp_norm.weight", true},
    {Slot::kQWeight, "q.weight", true},
    {Slot::kKWeight, "k.weight", true},
    {Slot::kVWeight, "v.weight", true},
    {Slot::kQBias, "q.bias", true},
    {Slot::kKBias, "k.bias", true},
    {Slot::kVBias, "v.bias", true},
    {Slot::kOWeight, "o.weight", true},
    {Slot::kGateWeight, "gate.weight", true},
    {Slot::kUpWeight, "up.weight", true},
    {Slot::kDownWeight, "down.weight", true},
};

const SlotInfo& Info(Slot slot) { return kSlots[static_cast<int>(slot)]; }

enum class Family { kOriginal, kTransformers };

// The remapping table. `source` has "{L}" where the layer index goes. Several targets: the
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
      {Family::kTransformers, "model.layers.{L}.self_attn.rotary_emb.inv_freq", {}, "derived rotary buffer, recomputed from the config"},
      // original remote-code ChatGLM2/3 and GLM-4-9B-chat
      {Family::kOriginal, "transformer.embedding.word_embeddings.weight", {Slot::kEmbed}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.input_layernorm.weight", {Slot::kInputNorm}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.self_attention.query_key_value.weight",
       {Slot::kQWeight, Slot::kKWeight, Slot::kVWeight}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.self_attention.query_key_value.bias",
       {Slot::kQBias, Slot::kKBias, Slot::kVBias}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.self_attention.dense.weight", {Slot::kOWeight}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.post_attention_layernorm.weight", {Slot::kMlpNorm}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.mlp.dense_h_to_4h.weight", {Slot::kGateWeight, Slot::kUpWeight}},
      {Family::kOriginal, "transformer.encoder.layers.{L}.mlp.dense_4h_to_h.weight", {Slot::kDownWeight}},
      {Family::kOriginal, "transformer.encoder.final_layernorm.weight", {Slot::kFinalNorm}},
      {Family::kOriginal, "transformer.output_layer.weight", {Slot::kLmHead}},
      {Family::kOriginal, "transformer.rotary_pos_emb.inv_freq", {}, "derived rotary buffer, recomputed from the config"},
  };
  return rules;
}

// Prefixes that wrappers add (DataParallel, PEFT, torch.compile); stripped before matching.
constexpr const char* kWrapperPrefixes[] = {"module.", "base_model.model.", "_orig_mod."};

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::vector<int64_t> SlotShape(Slot slot, const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_attention_heads} * c.head_dim,
                kv = int64_t{c.num_key_value_heads} * c.head_dim, f = c.intermediate_size, v = c.vocab_size;
  switch (slot) {
    case Slot::kEmbed: case Slot::kLmHead: return {v, h};
    case Slot::kFinalNorm: case Slot::kInputNorm: case Slot::kPostAttnNorm:
    case Slot::kMlpNorm: case Slot::kPostMlpNorm: return {h};
    case Slot::kQWeight: return {q, h};
    case Slot::kKWeight: case Slot::kVWeight: return {kv, h};
    case Slot::kQBias: return {q};
    case Slot::kKBias: case Slot::kVBias: return {kv};
    case Slot::kOWeight: return {h, q};
    case Slot::kGateWeight: case Slot::kUpWeight: return {f, h};
    case Slot::kDownWeight: return {h, f};
  }
  return {};
}

// Why a slot is not part of this model, or "" when it is required.
const char* SlotAbsentReason(Slot slot, const ModelConfig& c) {
  switch (slot) {
    case Slot::kLmHead:
      return c.tie_word_embeddings ? "tie_word_embeddings is true" : "";
    case Slot::kQBias: case Slot::kKBias: case Slot::kVBias:
      return c.attention_bias ? "" : (c.architecture == Architecture::kChatGLM ? "add_qkv_bias is false"
                                                                              : "attention_bias is false");
    case Slot::kPostAttnNorm: case Slot::kPostMlpNorm:
      return c.sandwich_norms ? "" : "only glm4 has post-attention/post-MLP sandwich norms";
    default:
      return "";
  }
}

std::string SlotName(Slot slot, int32_t layer) {
  return Info(slot).per_layer ? CanonicalLayerName(layer, Info(slot).name) : Info(slot).name;
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
  for (int32_t l = -1; l < config.num_layers; ++l) {
    for (const SlotInfo& info : kSlots) {
      if (info.per_layer != (l >= 0) || *SlotAbsentReason(info.slot, config)) continue;
      MappedTensor t;
      t.canonical = SlotName(info.slot, l);
      t.source_key = t.canonical;
      t.shape = SlotShape(info.slot, config);
      t.row_end = t.shape[0];
      tensors.push_back(std::move(t));
    }
  }
  return tensors;
}

WeightPlan PlanWeights(const ModelConfig& config, const CheckpointListing& listing) {
  WeightPlan plan;
  plan.problems = listing.problems;
  const Family family = config.architecture == Architecture::kChatGLM ? Family::kOriginal : Family::kTransformers;
  const bool original = family == Family::kOriginal;
  const char* layers_field = original ? "num_layers" : "num_hidden_layers";
  const char* vocab_field = original ? "padded_vocab_size" : "vocab_size";

  std::map<SlotKey, MappedTensor> provided;
  std::set<SlotKey> misshapen;
  std::set<std::string> dtypes;
  std::set<int32_t> layers_beyond_config;
  std::vector<bool> layer_has_tensors(std::max(config.num_layers, 0), false);

  for (const TensorRecord& record : listing.tensors) {
    std::string key = record.name;
    std::string stripped;
    for (bool again = true; again;) {
      again = false;
      for (const char* prefix : kWrapperPrefixes) {
        if (absl::StartsWith(key, prefix)) {
          stripped += prefix;
          key = key.substr(std::string(prefix).size());
          again = true;
        }
      }
    }
    // A transformers base model (GlmModel) saves keys without the "model." prefix.
    if (family == Family::kTransformers && !absl::StartsWith(key, "model.") && !absl::StartsWith(key, "lm_head.")) {
      stripped += "(+model.)";
      key = "model." + key;
    }
    const KeyRule* rule = nullptr;
    int32_t layer = -1;
    for (const KeyRule& candidate : KeyRules()) {
      if (candidate.family == family && MatchPattern(candidate.source, key, &layer)) {
        rule = &candidate;
        break;
      }
    }
    const std::string note = stripped.empty() ? "" : absl::StrCat(" (wrapper prefix '", stripped, "' stripped)");
    if (rule == nullptr) {
      plan.problems.push_back(absl::StrCat("unexpected key '", record.name, "' in ", record.file, ": no ",
                                           ArchitectureName(config.architecture), " tensor has this name"));
      continue;
    }
    if (rule->targets.empty()) {
      plan.mapping.push_back(absl::StrCat(record.name, " -> dropped: ", rule->why, note));
      continue;
    }
    if (layer >= config.num_layers) {
      layers_beyond_config.insert(layer);
      continue;
    }
    if (layer >= 0) layer_has_tensors[layer] = true;

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
    for (Slot slot : rule->targets) {
      if (const char* why = SlotAbsentReason(slot, config); *why) absent.push_back(why);
    }
    if (!absent.empty()) {
      if (config.tie_word_embeddings && rule->targets[0] == Slot::kLmHead) {
        plan.mapping.push_back(absl::StrCat(record.name, " -> ignored: tie_word_embeddings is true, ",
                                            "lm_head reuses embed.weight", note));
      } else {
        plan.problems.push_back(absl::StrCat("unexpected key '", record.name, "' in ", record.file,
                                             ": config.json says ", absent[0]));
      }
      continue;
    }
    if (record.shape != expected) {
      plan.problems.push_back(absl::StrCat("shape mismatch: key '", record.name, "' in ", record.file,
                                           ": expected ", ShapeString(expected), ", found ",
                                           ShapeString(record.shape)));
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
      targets_text.push_back(rule->targets.size() == 1
                                 ? mapped.canonical
                                 : absl::StrCat(mapped.canonical, " [rows ", mapped.row_begin, ":", mapped.row_end, "]"));
      auto [it, inserted] = provided.emplace(SlotKey{slot, layer}, mapped);
      if (!inserted) {
        plan.problems.push_back(absl::StrCat("duplicate: keys '", it->second.source_key, "' and '", record.name,
                                             "' both provide ", mapped.canonical));
      }
    }
    plan.mapping.push_back(absl::StrCat(record.name, " -> ", absl::StrJoin(targets_text, ", "), note));
  }

  if (!layers_beyond_config.empty()) {
    plan.problems.push_back(absl::StrCat("config.json ", layers_field, " is ", config.num_layers,
                                         " but the checkpoint has tensors for layer(s) ",
                                         absl::StrJoin(layers_beyond_config, ", "), " too"));
  }
  // A key that may be in a weight file that could not be read (reported once, as unreadable) is
  // not reported again as missing.
  auto maybe_unreadable = [&](const std::string& key) {
    return listing.unreadable_keys_unknown || listing.unreadable_keys.count(key) > 0;
  };
  const char* first_key = family == Family::kOriginal ? "transformer.encoder.layers.{L}.input_layernorm.weight"
                                                      : "model.layers.{L}.input_layernorm.weight";
  std::vector<int32_t> empty_layers;
  int32_t unreadable_layers = 0;
  for (int32_t l = 0; l < config.num_layers; ++l) {
    if (layer_has_tensors[l]) continue;
    if (maybe_unreadable(Instantiate(first_key, l))) {
      ++unreadable_layers;
    } else {
      empty_layers.push_back(l);
    }
  }
  const bool empty_layers_reported =
      !empty_layers.empty() && static_cast<int32_t>(empty_layers.size()) + unreadable_layers < config.num_layers;
  if (empty_layers_reported) {
    plan.problems.push_back(absl::StrCat("config.json ", layers_field, " is ", config.num_layers,
                                         " but the checkpoint has no tensors for layer(s) ",
                                         absl::StrJoin(empty_layers, ", "), " (e.g. '",
                                         Instantiate(first_key, empty_layers[0]), "' is absent)"));
  }
  // Every required slot must be provided; a layer with no tensors at all was reported above.
  auto display_source = [&](Slot slot, int32_t layer) {
    for (const KeyRule& rule : KeyRules()) {
      if (rule.family != family) continue;
      for (Slot target : rule.targets) {
        if (target == slot) return Instantiate(rule.source, layer);
      }
    }
    return SlotName(slot, layer);
  };
  for (int32_t l = -1; l < config.num_layers; ++l) {
    if (l >= 0 && !layer_has_tensors[l] && empty_layers_reported) continue;
    for (const SlotInfo& info : kSlots) {
      if (info.per_layer != (l >= 0) || *SlotAbsentReason(info.slot, config)) continue;
      const int32_t layer = info.per_layer ? l : -1;
      auto it = provided.find(SlotKey{info.slot, layer});
      if (it != provided.end()) {
        plan.tensors.push_back(it->second);
        continue;
      }
      if (misshapen.count(SlotKey{info.slot, layer}) > 0) continue;
      if (maybe_unreadable(display_source(info.slot, layer))) continue;
      plan.problems.push_back(absl::StrCat("missing key '", display_source(info.slot, layer), "' (",
                                           SlotName(info.slot, layer), ", expected shape ",
                                           ShapeString(SlotShape(info.slot, config)), ")"));
    }
  }
  // A vocabulary mismatch shows up as shape mismatches; say what it means once.
  for (const TensorRecord& record : listing.tensors) {
    const bool is_embedding = absl::EndsWith(record.name, original ? "word_embeddings.weight" : "embed_tokens.weight");
    if (is_embedding && record.shape.size() == 2 && record.shape[0] != config.vocab_size) {
      plan.problems.push_back(absl::StrCat("config.json ", vocab_field, " is ", config.vocab_size,
                                           " but the embedding '", record.name, "' has ", record.shape[0], " rows"));
    }
  }
  if (dtypes.size() == 1) plan.stored_dtype = *dtypes.begin();
  else if (dtypes.size() > 1) plan.stored_dtype = "mixed";
  for (const MappedTensor& t : plan.tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    plan.parameter_count += n;
  }
  if (!plan.problems.empty()) plan.tensors.clear();
  return plan;
}

}  // namespace glmserve
